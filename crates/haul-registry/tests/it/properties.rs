//! Property tests of `WWW-Authenticate` parsing (bounded cases;
//! `PROPTEST_CASES=100000` runs longer): any header value parses without
//! panicking, and well-formed challenges give back their parameters.

use haul_registry::auth::parse_challenges;
use proptest::prelude::*;

// proptest's default: 256 cases, or `PROPTEST_CASES`.
proptest! {
    #[test]
    fn any_header_value_parses_without_panicking(
        values in prop::collection::vec("\\PC{0,120}", 0..4),
        tricky in prop::collection::vec(prop_oneof![
            Just("Bearer "), Just("Basic "), Just("realm="), Just("\""), Just("\\"),
            Just(","), Just("="), Just(" "), Just("scope=\"a b\""), Just("é"),
        ], 0..20),
    ) {
        let mut all = values.clone();
        all.push(tricky.concat());
        let _ = parse_challenges(all.iter().map(String::as_str));
    }

    #[test]
    fn bearer_parameters_come_back(
        realm in "https://[a-z]{1,10}(:[0-9]{2,5})?/[a-z/]{0,10}",
        service in "[a-zA-Z0-9.:-]{1,20}",
        scope in "repository:[a-z/]{1,12}:(pull|push|pull,push)",
        scheme in prop_oneof![Just("Bearer"), Just("bearer"), Just("BEARER")],
        basic_first: bool,
    ) {
        let bearer = format!(r#"{scheme} realm="{realm}",service="{service}",scope="{scope}""#);
        let header = if basic_first {
            format!(r#"Basic realm="x", {bearer}"#)
        } else {
            bearer
        };
        let challenges = parse_challenges([header.as_str()]);
        let found = challenges.iter().find(|c| c.is_bearer());
        prop_assert!(found.is_some(), "{header}: {challenges:?}");
        let found = found.unwrap();
        prop_assert_eq!(found.param("realm"), Some(realm.as_str()));
        prop_assert_eq!(found.param("service"), Some(service.as_str()));
        prop_assert_eq!(found.param("scope"), Some(scope.as_str()));
    }
}
