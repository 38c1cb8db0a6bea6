// Check that every deployment target in envoy/ agrees with the filter's metric contract.
//
//   node envoy/check-contract.mjs [--bootstrap-dir DIR]
//
// The metric names come from the filter's source (filter/src/metrics.rs, `pub const X: &str = "llm_..."`);
// the labels are the contract's. Checked: envoy.yaml's stats_tags (one per label, the exact regex) and
// histogram buckets; the same tags and buckets in Envoy Gateway's bootstrap merge and Istio's
// EnvoyFilter; Istio's extraStatTags and stats inclusion list; every llm_* and vllm:* name used by the
// alert rules and the dashboard exists; the native build's bootstrap (envoy-dynamic-module.yaml) and its
// Envoy Gateway manifest have the same buckets under the module's stat names and the prefix-strip flag. With --bootstrap-dir, the bootstrap fragments of the Istio and
// Envoy Gateway manifests are written there as files for `envoy --mode validate`.
// Prints one line per check and exits 1 if any failed. Needs `yaml` from envoy/setup.sh --test.
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, "..");
const modules = process.env.NPM_MODULES_DIR || join(root, ".cache", "npm", "node_modules");
if (!existsSync(join(modules, "yaml", "package.json"))) {
  console.error(`check-contract: yaml not found in ${modules}; run envoy/setup.sh --test`);
  process.exit(2);
}
const YAML = createRequire(join(modules, "package.json"))("yaml");

// Label names in the order the filter writes them (contract: "Label names"): the static labels
// (`LABEL_NAMES` in filter/src/metrics.rs). Labels an operator adds with the filter's `label_headers`
// (README "Per-tenant labels", e.g. `tenant`) are not shipped enabled; where a deployment file adds
// their tags, they must come after these, follow the same regex convention, and be the same extra
// labels in every file.
const LABELS = ["model", "api", "streaming", "status_class", "outcome", "token_type", "source", "kind"];
// The engine's vLLM-compatible metrics the alerts and dashboard may use.
const ENGINE_METRICS = [
  "vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
  "vllm:prompt_tokens_total", "vllm:generation_tokens_total", "vllm:request_success_total",
  "vllm:time_to_first_token_seconds", "vllm:inter_token_latency_seconds",
  "vllm:e2e_request_latency_seconds", "vllm:request_queue_time_seconds",
  "vllm:request_prefill_time_seconds", "vllm:request_decode_time_seconds",
];

let failed = 0;
let passed = 0;
function check(name, fn) {
  try {
    fn();
    console.log(`ok   ${name}`);
    passed++;
  } catch (e) {
    console.log(`FAIL ${name}: ${e.message}`);
    failed++;
  }
}
const rel = (p) => join(root, p);
const read = (p) => readFileSync(rel(p), "utf8");
const loadYaml = (p) => YAML.parseAllDocuments(read(p)).map((d) => d.toJS());
const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);
function expectEqual(what, got, want) {
  if (!same(got, want)) throw new Error(`${what}: got ${JSON.stringify(got)}, want ${JSON.stringify(want)}`);
}

let metricNames = [];
check("filter/src/metrics.rs defines the llm_* metric names", () => {
  const src = read("filter/src/metrics.rs");
  metricNames = [...src.matchAll(/pub const \w+: &str = "(llm_\w+)";/g)].map((m) => m[1]);
  if (metricNames.length === 0) throw new Error("no `pub const NAME: &str = \"llm_...\";` found");
});
const histograms = () => metricNames.filter((n) => /_(ms|us)$/.test(n));

const envoyYaml = loadYaml("envoy/envoy.yaml")[0];
const tagOf = (l) => ({ tag_name: l, regex: `(${l}=\\.=(.*?);\\.;)` });
// The extra (label_headers) tag names of a stats_tags list whose first entries are the static labels'.
function extraTags(what, tags) {
  const list = tags || [];
  expectEqual(what, list.slice(0, LABELS.length), LABELS.map(tagOf));
  const extra = list.slice(LABELS.length);
  for (const t of extra) {
    if (LABELS.includes(t.tag_name) || !same(t, tagOf(t.tag_name))) {
      throw new Error(`${what}: extra tag ${JSON.stringify(t)} is not a new label with the convention's regex`);
    }
  }
  return extra.map((t) => t.tag_name);
}
let extraLabels = [];
const wantTags = () => [...LABELS, ...extraLabels].map(tagOf);
const bucketsOf = (settings) =>
  Object.fromEntries((settings || []).map((s) => [s.match?.suffix ?? JSON.stringify(s.match), s.buckets]));
const envoyBuckets = bucketsOf(envoyYaml.stats_config?.histogram_bucket_settings);

check("envoy.yaml stats_tags: one per label with the Istio-convention regex", () => {
  extraLabels = extraTags("stats_tags", envoyYaml.stats_config?.stats_tags);
});
check("envoy.yaml histogram_bucket_settings: one suffix match per histogram, ascending buckets", () => {
  expectEqual("histograms", Object.keys(envoyBuckets).sort(), histograms().sort());
  for (const [name, b] of Object.entries(envoyBuckets)) {
    if (!b.every((v, i) => i === 0 || v > b[i - 1])) throw new Error(`${name}: buckets not ascending`);
  }
});

const egDocs = loadYaml("envoy/envoy-gateway/envoyproxy.yaml");
const egBootstrap = YAML.parse(egDocs.find((d) => d.kind === "EnvoyProxy").spec.bootstrap.value);
check("Envoy Gateway bootstrap merge: same stats_tags and buckets as envoy.yaml", () => {
  expectEqual("stats_tags", egBootstrap.stats_config?.stats_tags, wantTags());
  expectEqual("buckets", bucketsOf(egBootstrap.stats_config?.histogram_bucket_settings), envoyBuckets);
});
// The native build: its own bucket matchers (dynamic-module stat names), the same buckets.
const dmYaml = loadYaml("envoy/envoy-dynamic-module.yaml")[0];
const dmBucketsOf = (settings) =>
  Object.fromEntries((settings || []).map((s) => {
    const m = /^dynamicmodulescustom\.(llm_\w+)\.$/.exec(s.match?.prefix ?? "");
    return [m ? m[1] : JSON.stringify(s.match), s.buckets];
  }));
const stripFlag = "envoy.reloadable_features.dynamic_modules_strip_custom_stat_prefix";
const stripsPrefix = (bootstrap) =>
  (bootstrap.layered_runtime?.layers || []).some((l) => l.static_layer?.[stripFlag] === true);
check("envoy-dynamic-module.yaml: the wasm build's buckets by module stat name, prefix stripped", () => {
  expectEqual("buckets", dmBucketsOf(dmYaml.stats_config?.histogram_bucket_settings), envoyBuckets);
  if (!stripsPrefix(dmYaml)) throw new Error(`no static runtime layer sets ${stripFlag}: true`);
});
const egDmDocs = loadYaml("envoy/envoy-gateway/dynamic-module.yaml");
const egDmProxy = egDmDocs.find((d) => d.kind === "EnvoyProxy");
const egDmBootstrap = YAML.parse(egDmProxy.spec.bootstrap.value);
check("Envoy Gateway dynamic module: allow-listed, attached, same buckets and flag as envoy-dynamic-module.yaml", () => {
  expectEqual("buckets", dmBucketsOf(egDmBootstrap.stats_config?.histogram_bucket_settings), envoyBuckets);
  if (!stripsPrefix(egDmBootstrap)) throw new Error(`bootstrap merge does not set ${stripFlag}`);
  const allowed = (egDmProxy.spec.dynamicModules || []).map((m) => m.name);
  const policy = egDmDocs.find((d) => d.kind === "EnvoyExtensionPolicy");
  const used = (policy?.spec?.dynamicModule || []).map((m) => m.name);
  if (used.length !== 1 || !allowed.includes(used[0])) throw new Error(`policy uses ${used}, allowlist ${allowed}`);
});
const egPolicy = loadYaml("envoy/envoy-gateway/extension-policy.yaml")[0];
check("Envoy Gateway EnvoyExtensionPolicy: wasm with failOpen", () => {
  const wasm = egPolicy.spec?.wasm;
  if (!Array.isArray(wasm) || wasm.length !== 1) throw new Error("expected one spec.wasm entry");
  if (wasm[0].failOpen !== true) throw new Error("spec.wasm[0].failOpen must be true");
  if (!wasm[0].code?.type) throw new Error("spec.wasm[0].code.type missing");
});

const filterDoc = loadYaml("envoy/istio/envoyfilter-histogram-buckets.yaml")[0];
const istioPatch = filterDoc.spec.configPatches.find((p) => p.applyTo === "BOOTSTRAP").patch.value;
check("Istio EnvoyFilter bootstrap patch: same buckets as envoy.yaml", () =>
  expectEqual("buckets", bucketsOf(istioPatch.stats_config?.histogram_bucket_settings), envoyBuckets));
const mesh = loadYaml("envoy/istio/mesh-config.yaml")[0].spec.meshConfig.defaultConfig;
check("Istio extraStatTags: the contract's labels", () =>
  expectEqual("extraStatTags", mesh.extraStatTags, [...LABELS, ...extraLabels]));
check("Istio proxyStatsMatcher: includes every llm_* metric by suffix", () =>
  expectEqual("inclusionSuffixes", [...mesh.proxyStatsMatcher.inclusionSuffixes].sort(), [...metricNames].sort()));
const plugin = loadYaml("envoy/istio/wasmplugin.yaml")[0];
check("Istio WasmPlugin: phase STATS, FAIL_OPEN", () => {
  expectEqual("phase", plugin.spec.phase, "STATS");
  expectEqual("failStrategy", plugin.spec.failStrategy, "FAIL_OPEN");
});

function namesUsed(text) {
  return {
    llm: [...new Set([...text.matchAll(/\bllm_[a-z0-9_]+/g)].map((m) => m[0]))],
    vllm: [...new Set([...text.matchAll(/\bvllm:[a-z0-9_]+/g)].map((m) => m[0]))],
  };
}
function knownMetric(name) {
  const base = name.replace(/_(bucket|sum|count)$/, "");
  return metricNames.includes(name) || (histograms().includes(base) && base !== name);
}
function knownEngineMetric(name) {
  return ENGINE_METRICS.includes(name) || ENGINE_METRICS.includes(name.replace(/_(bucket|sum|count)$/, ""));
}
const alertExprs = loadYaml("envoy/prometheus/alerts.yml")[0].groups.flatMap((g) => g.rules.map((r) => r.expr));
const dashboard = JSON.parse(read("envoy/grafana/llm-gateway.json"));
const dashExprs = [];
(function walk(panels) {
  for (const p of panels || []) {
    for (const t of p.targets || []) dashExprs.push(t.expr);
    walk(p.panels);
  }
})(dashboard.panels);
for (const [what, exprs] of [["alerts.yml", alertExprs], ["llm-gateway.json", dashExprs]]) {
  check(`${what}: every metric it queries exists`, () => {
    const used = namesUsed(exprs.join("\n"));
    const unknown = [...used.llm.filter((n) => !knownMetric(n)), ...used.vllm.filter((n) => !knownEngineMetric(n))];
    if (unknown.length) throw new Error(`unknown metric(s): ${unknown.join(", ")}`);
    if (used.llm.length === 0) throw new Error("queries no llm_* metric");
  });
}

const outIdx = process.argv.indexOf("--bootstrap-dir");
if (outIdx > 0) {
  const dir = process.argv[outIdx + 1];
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, "envoy-gateway-bootstrap.yaml"), YAML.stringify(egBootstrap));
  writeFileSync(join(dir, "istio-envoyfilter-bootstrap.yaml"), YAML.stringify(istioPatch));
  writeFileSync(join(dir, "envoy-gateway-dynamic-module-bootstrap.yaml"), YAML.stringify(egDmBootstrap));
}

console.log(`check-contract: ${passed} passed, ${failed} failed`);
process.exit(failed === 0 ? 0 : 1);
