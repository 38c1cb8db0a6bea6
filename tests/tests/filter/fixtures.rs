//! Golden fixtures (`tests/fixtures/*.json`): each exchange must produce exactly the series it
//! lists, however its response body is cut into chunks.

use gateway_tests::fixture::{self, diff, Fixture, FixtureReplay as _, Split};

fn all() -> Vec<Fixture> {
    let fixtures = fixture::load_all(&fixture::fixtures_dir()).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        !fixtures.is_empty(),
        "no fixtures in {}",
        fixture::fixtures_dir().display()
    );
    fixtures
}

/// Runs `check` on every fixture and fails once, listing every fixture that failed.
fn for_each_fixture(check: impl Fn(&Fixture) -> Result<(), String>) {
    let failures: Vec<String> = all()
        .iter()
        .filter_map(|f| check(f).err().map(|e| format!("fixture {}: {e}", f.name)))
        .collect();
    assert!(
        failures.is_empty(),
        "{} fixture(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn every_golden_fixture_produces_exactly_its_expected_series() {
    for_each_fixture(|f| {
        let replay = f.replay(&Split::Whole).map_err(|e| format!("{e:#}"))?;
        let d = diff(&f.expected_lines(), &replay.observed_lines());
        if !d.is_empty() {
            return Err(format!("({})\n{d}", f.description));
        }
        let gauges = replay.nonzero_gauges();
        if !gauges.is_empty() {
            return Err(format!("gauges not back to 0: {gauges:?}"));
        }
        if !replay.anomalies.is_empty() {
            return Err(format!("host anomalies: {:?}", replay.anomalies));
        }
        Ok(())
    });
}

#[test]
fn every_fixture_gives_identical_series_at_seeded_random_cuts_byte_by_byte_and_with_an_empty_last_chunk(
) {
    for_each_fixture(|f| {
        let whole = f
            .replay(&Split::Whole)
            .map_err(|e| format!("{e:#}"))?
            .full_lines();
        for split in fixture::standard_splits() {
            let replay = f.replay(&split).map_err(|e| format!("{split:?}: {e:#}"))?;
            let d = diff(&whole, &replay.full_lines());
            if !d.is_empty() {
                return Err(format!("{split:?} differs from the whole body:\n{d}"));
            }
            let d = diff(&f.expected_lines(), &replay.observed_lines());
            if !d.is_empty() {
                return Err(format!("{split:?} differs from expect:\n{d}"));
            }
        }
        Ok(())
    });
}

#[test]
fn every_sse_edge_case_fixture_gives_identical_series_when_cut_once_at_any_offset() {
    // One replay per offset, so only the fixtures made for decoder edge cases (line ends, BOM,
    // multi-byte characters, comments, aborted streams); the random and byte-by-byte splits above
    // cover every fixture. Offsets are spread over the available cores.
    for_each_fixture(|f| {
        if !(f.name.starts_with("sse_") || f.name.starts_with("stream_")) {
            return Ok(());
        }
        let body = f.response_body().map_err(|e| format!("{e:#}"))?;
        let whole = f
            .replay(&Split::Whole)
            .map_err(|e| format!("{e:#}"))?
            .full_lines();
        let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
        let failures: Vec<String> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..workers)
                .map(|w| {
                    let whole = &whole;
                    let len = body.len();
                    scope.spawn(move || {
                        // One gateway per worker: each replay's series are what it added.
                        let gw = match f.gateway() {
                            Ok(gw) => gw,
                            Err(e) => return vec![format!("{e:#}")],
                        };
                        (1..len)
                            .filter(|at| at % workers == w)
                            .filter_map(|at| match f.replay_on(&gw, &Split::At(vec![at])) {
                                Err(e) => Some(format!("cut at byte {at}: {e:#}")),
                                Ok(r) => {
                                    let d = diff(whole, &r.full_lines());
                                    (!d.is_empty()).then(|| format!("cut at byte {at}:\n{d}"))
                                }
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap_or_default())
                .collect()
        });
        match failures.first() {
            None => Ok(()),
            Some(first) => Err(format!(
                "{} cut(s) differ from the whole body; first: {first}",
                failures.len()
            )),
        }
    });
}
