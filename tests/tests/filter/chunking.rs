//! Property: however a stream's body is cut into `proxy_on_response_body` calls, the filter
//! produces the same series (driven through the real wasm).

use gateway_tests::fixture::{self, Fixture, Split};
use proptest::prelude::*;
use std::sync::OnceLock;

fn streaming_fixtures() -> &'static Vec<Fixture> {
    static FIXTURES: OnceLock<Vec<Fixture>> = OnceLock::new();
    FIXTURES.get_or_init(|| {
        fixture::load_all(&fixture::fixtures_dir())
            .unwrap_or_else(|e| panic!("{e:#}"))
            .into_iter()
            .filter(|f| f.response.body_file.is_some())
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn any_chunking_of_a_streaming_fixture_gives_the_same_series(
        index in any::<prop::sample::Index>(),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..64),
    ) {
        let fixtures = streaming_fixtures();
        prop_assume!(!fixtures.is_empty());
        let f = &fixtures[index.index(fixtures.len())];
        let len = f.response_body().map(|b| b.len()).unwrap_or(0).max(1);
        let points: Vec<usize> = cuts.iter().map(|c| c.index(len)).collect();
        let whole = f.replay(&Split::Whole).map_err(|e| TestCaseError::fail(format!("{e:#}")))?;
        let cut = f.replay(&Split::At(points.clone())).map_err(|e| TestCaseError::fail(format!("{e:#}")))?;
        let d = fixture::diff(&whole.full_lines(), &cut.full_lines());
        prop_assert!(d.is_empty(), "fixture {} cut at {:?}:\n{}", f.name, points, d);
    }
}
