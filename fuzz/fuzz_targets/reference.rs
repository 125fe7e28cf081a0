//! References: parsing never panics; what parses prints back to itself.
#![no_main]

use haul_oci::Reference;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &str| {
    if let Ok(parsed) = Reference::parse_raw(input) {
        let printed = parsed.to_string();
        let again = Reference::parse_raw(&printed).expect("a printed reference parses");
        assert_eq!(again, parsed);
    }
});
