// Validate Kubernetes manifests for Istio against Istio's published CRD schemas.
//
//   node envoy/validate-istio.mjs envoy/istio/*.yaml
//
// Every YAML document must be an Istio resource (extensions, networking, security, telemetry or install
// .istio.io); each is loaded into its @kubernetes-models/istio model, whose validate() checks it against
// the JSON schema generated from Istio's CRDs (types, enums, required fields). One line per document,
// then the number checked; the exit status is 1 if any document fails or cannot be checked.
//
// The packages come from envoy/setup.sh --test (.cache/npm, or the directory in $NPM_MODULES_DIR).
import { existsSync, readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const modules = process.env.NPM_MODULES_DIR || join(root, ".cache", "npm", "node_modules");
const istioDir = join(modules, "@kubernetes-models", "istio");
if (!existsSync(join(istioDir, "package.json"))) {
  console.error(`validate-istio: ${istioDir} not found; run envoy/setup.sh --test`);
  process.exit(2);
}
const { parseAllDocuments } = createRequire(join(modules, "package.json"))("yaml");

const files = process.argv.slice(2);
if (files.length === 0) {
  console.error("usage: node envoy/validate-istio.mjs FILE.yaml...");
  process.exit(2);
}

async function modelFor(apiVersion, kind) {
  const [group, version] = String(apiVersion).split("/");
  if (!group || !version || !group.endsWith(".istio.io")) {
    throw new Error(`apiVersion ${apiVersion} is not an Istio API group`);
  }
  const index = join(istioDir, group, version, "index.js");
  if (!existsSync(index)) throw new Error(`no Istio schema for ${apiVersion}`);
  const models = await import(pathToFileURL(index).href);
  if (!models[kind]) throw new Error(`no Istio schema for kind ${kind} in ${apiVersion}`);
  return models[kind];
}

let checked = 0;
let failed = 0;
for (const file of files) {
  let docs;
  try {
    docs = parseAllDocuments(readFileSync(file, "utf8"));
  } catch (e) {
    console.log(`FAIL ${file}: ${e.message}`);
    failed++;
    continue;
  }
  for (const [i, doc] of docs.entries()) {
    if (doc.contents === null) continue; // empty document, e.g. after a trailing ---
    checked++;
    const where = `${file}#${i + 1}`;
    try {
      if (doc.errors.length) throw new Error(doc.errors.map((e) => e.message).join("; "));
      const obj = doc.toJS();
      if (!obj || typeof obj !== "object") throw new Error("not a mapping");
      const Model = await modelFor(obj.apiVersion, obj.kind);
      new Model(obj).validate();
      console.log(`ok   ${where} ${obj.kind}/${obj.metadata?.name ?? "?"}`);
    } catch (e) {
      console.log(`FAIL ${where}: ${e.message}`);
      failed++;
    }
  }
}
console.log(`validate-istio: ${checked} document(s), ${failed} failed`);
process.exit(failed === 0 && checked > 0 ? 0 : 1);
