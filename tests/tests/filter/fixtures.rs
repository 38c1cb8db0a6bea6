//! Golden fixtures (`tests/fixtures/*.json`): each exchange must produce exactly the series it
//! lists, however its response body is cut into chunks.

use gateway_tests::fixture::{self, diff, Fixture, Split};

fn all() -> Vec<Fixture> {
    let fixtures = fixture::load_all(&fixture::fixtures_dir()).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(!fixtures.is_empty(), "no fixtures in {}", fixture::fixtures_dir().display());
    fixtures
}

/// Runs `check` on every fixture and fails once, listing every fixture that failed.
fn for_each_fixture(check: impl Fn(&Fixture) -> Result<(), String>) {
    let failures: Vec<String> = all()
        .iter()
        .filter_map(|f| check(f).err().map(|e| format!("fixture {}: {e}", f.name)))
        .collect();
    assert!(failures.is_empty(), "{} fixture(s) failed:\n{}", failures.len(), failures.join("\n"));
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
fn every_fixture_gives_identical_series_when_split_at_seeded_random_points_or_byte_by_byte() {
    for_each_fixture(|f| {
        let whole = f.replay(&Split::Whole).map_err(|e| format!("{e:#}"))?.full_lines();
        let mut splits: Vec<Split> = (0..6u64)
            .map(|seed| Split::Random { seed, cuts: 1 + (seed as usize * 7) % 40 })
            .collect();
        splits.push(Split::ByteByByte);
        for split in splits {
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
fn every_streaming_fixture_survives_a_cut_at_every_single_offset() {
    // Small streams only: one replay per offset.
    for_each_fixture(|f| {
        let body = f.response_body().map_err(|e| format!("{e:#}"))?;
        if f.response.body_file.is_none() || body.len() > 3000 {
            return Ok(());
        }
        let whole = f.replay(&Split::Whole).map_err(|e| format!("{e:#}"))?.full_lines();
        for at in 1..body.len() {
            let replay = f.replay(&Split::At(vec![at])).map_err(|e| format!("{e:#}"))?;
            let d = diff(&whole, &replay.full_lines());
            if !d.is_empty() {
                return Err(format!("cut at byte {at} differs from the whole body:\n{d}"));
            }
        }
        Ok(())
    });
}
