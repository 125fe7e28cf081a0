//! Parsing of `WWW-Authenticate` challenges (RFC 7235), as registries send
//! them: `Bearer realm="https://auth.example/token",service="registry",scope="repository:app:pull"`
//! or `Basic realm="Registry Realm"`.

use std::collections::BTreeMap;

/// One authentication challenge: a scheme and its parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// The scheme, lower-cased (`bearer`, `basic`).
    pub scheme: String,
    /// Parameters with lower-cased names (`realm`, `service`, `scope`, `error`).
    pub params: BTreeMap<String, String>,
}

impl Challenge {
    /// A parameter's value, by lower-case name.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }

    /// Whether this is a Bearer (token) challenge.
    pub fn is_bearer(&self) -> bool {
        self.scheme == "bearer"
    }

    /// Whether this is a Basic challenge.
    pub fn is_basic(&self) -> bool {
        self.scheme == "basic"
    }
}

/// Parses every challenge in the given header values. Malformed parts are
/// skipped rather than failing, as browsers and Docker do.
pub fn parse_challenges<'a>(headers: impl IntoIterator<Item = &'a str>) -> Vec<Challenge> {
    let mut out = Vec::new();
    for header in headers {
        parse_one_header(header, &mut out);
    }
    out
}

fn parse_one_header(header: &str, out: &mut Vec<Challenge>) {
    let mut rest = header.trim();
    while !rest.is_empty() {
        // Scheme token.
        let end = rest
            .find(|c: char| c.is_whitespace() || c == ',')
            .unwrap_or(rest.len());
        let scheme = rest[..end].to_ascii_lowercase();
        rest = rest[end..].trim_start();
        if scheme.is_empty() {
            rest = rest.trim_start_matches(',').trim_start();
            continue;
        }
        let mut params = BTreeMap::new();
        // Parameters: name=value or name="quoted", separated by commas. A
        // token not followed by '=' starts the next challenge.
        loop {
            rest = rest.trim_start_matches(|c: char| c == ',' || c.is_whitespace());
            let Some(eq) = rest.find('=') else { break };
            let name = &rest[..eq];
            if name.is_empty() || name.contains(|c: char| c.is_whitespace() || c == ',') {
                break;
            }
            let name = name.to_ascii_lowercase();
            let after = &rest[eq + 1..];
            let (value, remaining) = if let Some(quoted) = after.strip_prefix('"') {
                read_quoted(quoted)
            } else {
                let end = after.find(',').unwrap_or(after.len());
                (after[..end].trim().to_string(), &after[end..])
            };
            params.insert(name, value);
            rest = remaining;
        }
        out.push(Challenge { scheme, params });
    }
}

/// Reads a quoted string body (after the opening quote), handling `\"`
/// escapes; returns the value and what follows the closing quote.
fn read_quoted(s: &str) -> (String, &str) {
    let mut value = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => {
                if let Some((_, escaped)) = chars.next() {
                    value.push(escaped);
                }
            }
            '"' => return (value, &s[i + 1..]),
            other => value.push(other),
        }
    }
    (value, "")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_bearer_challenge_with_quoted_params() {
        let c = parse_challenges([
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull""#,
        ]);
        assert_eq!(c.len(), 1);
        assert!(c[0].is_bearer());
        assert_eq!(c[0].param("realm"), Some("https://auth.docker.io/token"));
        assert_eq!(c[0].param("service"), Some("registry.docker.io"));
        assert_eq!(c[0].param("scope"), Some("repository:library/alpine:pull"));
    }

    #[test]
    fn parses_a_basic_challenge() {
        let c = parse_challenges([r#"Basic realm="Registry Realm""#]);
        assert_eq!(c.len(), 1);
        assert!(c[0].is_basic());
        assert_eq!(c[0].param("realm"), Some("Registry Realm"));
    }

    #[test]
    fn scope_with_commas_inside_quotes_stays_whole() {
        let c = parse_challenges([
            r#"Bearer realm="http://127.0.0.1:1/token",scope="repository:a:pull,push",error="insufficient_scope""#,
        ]);
        assert_eq!(c[0].param("scope"), Some("repository:a:pull,push"));
        assert_eq!(c[0].param("error"), Some("insufficient_scope"));
    }

    #[test]
    fn several_challenges_in_one_header_and_across_headers() {
        let c = parse_challenges([
            r#"Basic realm="x", Bearer realm="https://t/token",service="s""#,
            "Negotiate",
        ]);
        let schemes: Vec<_> = c.iter().map(|c| c.scheme.as_str()).collect();
        assert_eq!(schemes, ["basic", "bearer", "negotiate"]);
        assert_eq!(c[1].param("service"), Some("s"));
    }

    #[test]
    fn scheme_and_param_names_are_case_insensitive_and_unquoted_values_work() {
        let c = parse_challenges(["BEARER Realm=https://t/token, Service=reg"]);
        assert!(c[0].is_bearer());
        assert_eq!(c[0].param("realm"), Some("https://t/token"));
        assert_eq!(c[0].param("service"), Some("reg"));
    }

    #[test]
    fn escaped_quotes_are_unescaped() {
        let c = parse_challenges([r#"Basic realm="say \"hi\"""#]);
        assert_eq!(c[0].param("realm"), Some(r#"say "hi""#));
    }

    #[test]
    fn empty_header_yields_nothing() {
        assert!(parse_challenges(["", "  "]).is_empty());
    }
}
