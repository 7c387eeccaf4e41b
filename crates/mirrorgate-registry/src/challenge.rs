//! `WWW-Authenticate` challenges (RFC 7235 §2.1, §4.1): a parser for what upstreams send and writers for what
//! the gateway sends.
//!
//! The parser is strict about the grammar (a header it cannot read is an error, not a guess) and lenient about
//! whitespace and empty list elements, which RFC 7230 §7 tells recipients to accept. It works on bytes, cannot
//! panic, and never copies more than the input.

use http::HeaderValue;

use crate::error::Error;

/// One challenge: a scheme and either auth-params or a token68.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// The scheme as sent (compare with [`Challenge::scheme_is`]: schemes are case-insensitive).
    pub scheme: String,
    /// Auth-params in order, names lower-cased (they are case-insensitive), values unquoted and unescaped.
    pub params: Vec<(String, String)>,
    /// The token68 form (`Negotiate abc==`), when used instead of params.
    pub token68: Option<String>,
}

impl Challenge {
    /// Case-insensitive scheme comparison.
    pub fn scheme_is(&self, scheme: &str) -> bool {
        self.scheme.eq_ignore_ascii_case(scheme)
    }

    /// The first value of param `name` (case-insensitive; RFC 7235 forbids repeats, so the first one counts).
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

/// The parts of a `Bearer` challenge the Docker token flow needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BearerChallenge {
    /// Token endpoint URL (as text: the caller decides whether to trust and parse it).
    pub realm: String,
    pub service: Option<String>,
    /// Space-separated scopes, as sent.
    pub scope: Option<String>,
}

impl BearerChallenge {
    /// Reads a `Bearer` challenge; `None` for other schemes or when `realm` is missing.
    pub fn from_challenge(challenge: &Challenge) -> Option<Self> {
        if !challenge.scheme_is("bearer") {
            return None;
        }
        Some(Self {
            realm: challenge.param("realm")?.to_owned(),
            service: challenge.param("service").map(str::to_owned),
            scope: challenge.param("scope").map(str::to_owned),
        })
    }

    /// The first usable `Bearer` challenge of a header (registries may offer Basic and Bearer together).
    pub fn from_header(header: &str) -> Result<Option<Self>, Error> {
        Ok(parse_challenges(header)?
            .iter()
            .find_map(Self::from_challenge))
    }

    /// Scopes split on spaces, the separator the Docker token spec uses inside one `scope` param.
    pub fn scopes(&self) -> impl Iterator<Item = &str> {
        self.scope
            .as_deref()
            .unwrap_or("")
            .split(' ')
            .filter(|s| !s.is_empty())
    }

    /// Renders the challenge back (see [`bearer_challenge`]).
    pub fn to_header_value(&self) -> HeaderValue {
        bearer_challenge(&self.realm, self.service.as_deref(), self.scope.as_deref())
    }
}

/// How an upstream wants to be authenticated, learned from the `WWW-Authenticate` of its 401.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamAuthScheme {
    /// The Docker token flow: fetch a token from `realm` for `service` and the request's scope.
    Bearer {
        realm: url::Url,
        service: Option<String>,
    },
    /// Plain Basic credentials on every request.
    Basic,
}

impl UpstreamAuthScheme {
    /// The scheme offered by a 401's `WWW-Authenticate` headers. Bearer wins over Basic when both are offered
    /// (tokens are scoped; Basic sends the password every time); a Bearer challenge whose realm is not a URL is
    /// skipped, as is a header that cannot be parsed.
    pub fn from_headers(headers: &http::HeaderMap) -> Option<Self> {
        let mut basic = false;
        for value in headers.get_all(http::header::WWW_AUTHENTICATE) {
            let Ok(challenges) = value.to_str().map(parse_challenges) else {
                continue;
            };
            let Ok(challenges) = challenges else { continue };
            for c in &challenges {
                if let Some(b) = BearerChallenge::from_challenge(c) {
                    if let Ok(realm) = url::Url::parse(&b.realm) {
                        return Some(UpstreamAuthScheme::Bearer {
                            realm,
                            service: b.service,
                        });
                    }
                }
                basic |= c.scheme_is("basic");
            }
        }
        basic.then_some(UpstreamAuthScheme::Basic)
    }
}

/// Parses a `WWW-Authenticate` value holding one or more challenges.
pub fn parse_challenges(header: &str) -> Result<Vec<Challenge>, Error> {
    let mut parser = Parser {
        input: header.as_bytes(),
        pos: 0,
    };
    let mut challenges = Vec::new();
    loop {
        parser.skip_list_separators();
        if parser.at_end() {
            break;
        }
        challenges.push(parser.challenge()?);
        parser.skip_ows();
        if !parser.at_end() && parser.peek() != Some(b',') {
            return Err(parser.error("expected ',' between challenges"));
        }
    }
    if challenges.is_empty() {
        return Err(parser.error("no challenge"));
    }
    Ok(challenges)
}

/// `Bearer realm="…",service="…"[,scope="…"]` with quoting done right. `service` is omitted when `None`.
///
/// Characters a header cannot carry (control characters) are dropped rather than failing: the inputs are
/// configuration and repository names that were validated already, so this only matters for hostile input.
pub fn bearer_challenge(realm: &str, service: Option<&str>, scope: Option<&str>) -> HeaderValue {
    let mut out = String::from("Bearer ");
    push_param(&mut out, "realm", realm);
    if let Some(service) = service {
        out.push(',');
        push_param(&mut out, "service", service);
    }
    if let Some(scope) = scope {
        out.push(',');
        push_param(&mut out, "scope", scope);
    }
    to_header_value(out, "Bearer")
}

/// `Basic realm="…"` for routes that take Basic credentials directly.
pub fn basic_challenge(realm: &str) -> HeaderValue {
    let mut out = String::from("Basic ");
    push_param(&mut out, "realm", realm);
    to_header_value(out, "Basic")
}

fn push_param(out: &mut String, name: &str, value: &str) {
    out.push_str(name);
    out.push_str("=\"");
    for c in value.chars() {
        if c.is_control() && c != '\t' {
            continue;
        }
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

fn to_header_value(text: String, fallback: &'static str) -> HeaderValue {
    // Controls were removed above, so this only fails on characters `from_bytes` refuses, which none are.
    HeaderValue::from_bytes(text.as_bytes()).unwrap_or_else(|_| HeaderValue::from_static(fallback))
}

struct Parser<'a> {
    input: &'a [u8],
    pos: usize,
}

/// RFC 7230 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// RFC 7235 `token68` characters (before the trailing `=` padding).
fn is_token68_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~+/".contains(&b)
}

impl<'a> Parser<'a> {
    fn at_end(&self) -> bool {
        self.pos >= self.input.len()
    }

    fn peek(&self) -> Option<u8> {
        self.input.get(self.pos).copied()
    }

    fn error(&self, reason: &'static str) -> Error {
        Error::Challenge {
            position: self.pos,
            reason,
        }
    }

    fn skip_ows(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.pos += 1;
        }
    }

    /// Whitespace and commas: RFC 7230 §7 lets list elements be empty.
    fn skip_list_separators(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b',')) {
            self.pos += 1;
        }
    }

    fn token(&mut self) -> Option<&'a str> {
        let start = self.pos;
        while self.peek().is_some_and(is_tchar) {
            self.pos += 1;
        }
        // tchars are ASCII, so the slice is valid UTF-8.
        std::str::from_utf8(&self.input[start..self.pos])
            .ok()
            .filter(|t| !t.is_empty())
    }

    fn challenge(&mut self) -> Result<Challenge, Error> {
        let scheme = self
            .token()
            .ok_or_else(|| self.error("expected an auth scheme"))?
            .to_owned();
        let mut challenge = Challenge {
            scheme,
            params: Vec::new(),
            token68: None,
        };
        let before_space = self.pos;
        self.skip_ows();
        if self.pos == before_space || self.at_end() || self.peek() == Some(b',') {
            // No space after the scheme means no params (the next thing must be a separator or the end).
            return Ok(challenge);
        }
        if let Some(param) = self.try_param()? {
            challenge.params.push(param);
            loop {
                let mark = self.pos;
                self.skip_ows();
                if self.peek() != Some(b',') {
                    // No comma: end of this challenge (the caller checks what follows).
                    self.pos = mark;
                    break;
                }
                self.skip_list_separators();
                if self.at_end() {
                    break;
                }
                match self.try_param()? {
                    Some(param) => challenge.params.push(param),
                    None => {
                        // Not `name=`: the next challenge starts after this comma; leave it to the caller.
                        self.pos = mark;
                        break;
                    }
                }
            }
            return Ok(challenge);
        }
        // token68
        let start = self.pos;
        while self.peek().is_some_and(is_token68_char) {
            self.pos += 1;
        }
        if self.pos == start {
            return Err(self.error("expected auth-params or token68 after the scheme"));
        }
        while self.peek() == Some(b'=') {
            self.pos += 1;
        }
        let token68 = std::str::from_utf8(&self.input[start..self.pos])
            .map_err(|_| self.error("invalid token68"))?;
        challenge.token68 = Some(token68.to_owned());
        Ok(challenge)
    }

    /// `token BWS "=" BWS ( token / quoted-string )`. Returns `Ok(None)` (position restored) when the input
    /// here is not `token =` followed by a value start, so the caller can try another production; a started
    /// but broken quoted string is an error.
    fn try_param(&mut self) -> Result<Option<(String, String)>, Error> {
        let start = self.pos;
        let Some(name) = self.token() else {
            self.pos = start;
            return Ok(None);
        };
        self.skip_ows();
        if self.peek() != Some(b'=') {
            self.pos = start;
            return Ok(None);
        }
        self.pos += 1;
        self.skip_ows();
        let value = match self.peek() {
            Some(b'"') => self.quoted_string()?,
            Some(b) if is_tchar(b) => match self.token() {
                Some(token) => token.to_owned(),
                None => {
                    self.pos = start;
                    return Ok(None);
                }
            },
            // `abc==` (token68 padding) or `name=` with nothing: not a param.
            _ => {
                self.pos = start;
                return Ok(None);
            }
        };
        Ok(Some((name.to_ascii_lowercase(), value)))
    }

    /// `DQUOTE *( qdtext / quoted-pair ) DQUOTE`, returning the unescaped content.
    fn quoted_string(&mut self) -> Result<String, Error> {
        let open = self.pos;
        self.pos += 1;
        let mut out = Vec::new();
        loop {
            match self.peek() {
                None => {
                    self.pos = open;
                    return Err(self.error("unterminated quoted string"));
                }
                Some(b'"') => {
                    self.pos += 1;
                    break;
                }
                Some(b'\\') => {
                    self.pos += 1;
                    match self.peek() {
                        Some(b) if b == b'\t' || !b.is_ascii_control() => {
                            out.push(b);
                            self.pos += 1;
                        }
                        _ => return Err(self.error("bad escape in quoted string")),
                    }
                }
                Some(b) if b == b'\t' || !b.is_ascii_control() => {
                    out.push(b);
                    self.pos += 1;
                }
                Some(_) => return Err(self.error("control character in quoted string")),
            }
        }
        // Only whole bytes of a valid UTF-8 input were copied (escapes drop ASCII backslashes only).
        String::from_utf8(out).map_err(|_| self.error("invalid UTF-8 in quoted string"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Rule: the Docker Hub challenge is read into realm/service/scope.
    #[test]
    fn docker_hub_challenge() {
        let h = r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull""#;
        let b = BearerChallenge::from_header(h).unwrap().unwrap();
        assert_eq!(b.realm, "https://auth.docker.io/token");
        assert_eq!(b.service.as_deref(), Some("registry.docker.io"));
        assert_eq!(b.scope.as_deref(), Some("repository:library/alpine:pull"));
    }

    // Rule: escapes are undone and commas inside quotes do not split params.
    #[test]
    fn quoted_strings_with_escapes_and_commas() {
        let h = r#"Bearer realm="https://a.test/t?x=1,2", service="say \"hi\" \\ o", scope="a:b:pull,push""#;
        let c = &parse_challenges(h).unwrap()[0];
        assert_eq!(c.param("realm"), Some("https://a.test/t?x=1,2"));
        assert_eq!(c.param("service"), Some(r#"say "hi" \ o"#));
        assert_eq!(c.param("scope"), Some("a:b:pull,push"));
        assert_eq!(c.params.len(), 3);
    }

    // Rule: several challenges in one header are split, including a param-less one and token68.
    #[test]
    fn several_challenges() {
        let h = r#"Basic realm="x", Bearer realm="https://t.test/token",service=reg, Negotiate abc+/==, NTLM"#;
        let cs = parse_challenges(h).unwrap();
        let schemes: Vec<_> = cs.iter().map(|c| c.scheme.as_str()).collect();
        assert_eq!(schemes, ["Basic", "Bearer", "Negotiate", "NTLM"]);
        assert_eq!(cs[1].param("service"), Some("reg"));
        assert_eq!(cs[2].token68.as_deref(), Some("abc+/=="));
        assert!(cs[3].params.is_empty() && cs[3].token68.is_none());
        let b = BearerChallenge::from_header(h).unwrap().unwrap();
        assert_eq!(b.realm, "https://t.test/token");
    }

    // Rule: scheme and param names are case-insensitive; whitespace around `=` and commas is allowed.
    #[test]
    fn case_and_whitespace() {
        let h = "  bEaReR   REALM = \"r\" ,\tService=s ,, ";
        let cs = parse_challenges(h).unwrap();
        assert_eq!(cs.len(), 1);
        assert!(cs[0].scheme_is("Bearer"));
        assert_eq!(cs[0].param("realm"), Some("r"));
        assert_eq!(cs[0].param("SERVICE"), Some("s"));
        assert_eq!(BearerChallenge::from_challenge(&cs[0]).unwrap().realm, "r");
    }

    // Rule: broken headers are errors, not guesses.
    #[test]
    fn malformed_headers_are_errors() {
        for h in [
            "",
            "   ",
            ",",
            r#"Bearer realm="unterminated"#,
            r#"Bearer realm="x" junk"#,
            "Bearer =x",
            "\"Bearer\"",
            "Bearer realm=\"a\u{1}b\"",
        ] {
            assert!(parse_challenges(h).is_err(), "{h:?}");
        }
    }

    // Rule: a Bearer challenge without a realm, or another scheme, yields no BearerChallenge.
    #[test]
    fn bearer_needs_realm() {
        assert_eq!(
            BearerChallenge::from_header(r#"Bearer service="x""#).unwrap(),
            None
        );
        assert_eq!(
            BearerChallenge::from_header(r#"Basic realm="x""#).unwrap(),
            None
        );
    }

    // Rule: the writer's output parses back to the same values, whatever the quoting needs are.
    #[test]
    fn writer_round_trips() {
        let realms = [
            "https://docker.test:8443/token",
            r#"we"ird\realm, with=comma"#,
            "",
            "ünïcode",
        ];
        for realm in realms {
            for service in [None, Some("docker.test"), Some(r#"s"\"#)] {
                for scope in [
                    None,
                    Some("repository:library/alpine:pull,push registry:catalog:*"),
                ] {
                    let value = bearer_challenge(realm, service, scope);
                    let text = std::str::from_utf8(value.as_bytes()).unwrap();
                    let parsed = BearerChallenge::from_header(text).unwrap().unwrap();
                    assert_eq!(parsed.realm, realm);
                    assert_eq!(parsed.service.as_deref(), service);
                    assert_eq!(parsed.scope.as_deref(), scope);
                }
            }
        }
        let basic = basic_challenge(r#"mirror "gateway""#);
        let parsed = parse_challenges(basic.to_str().unwrap()).unwrap();
        assert!(parsed[0].scheme_is("basic"));
        assert_eq!(parsed[0].param("realm"), Some(r#"mirror "gateway""#));
    }

    // Rule: scopes in one `scope` param are split on spaces.
    #[test]
    fn scopes_split() {
        let b = BearerChallenge {
            realm: "r".into(),
            service: None,
            scope: Some("a:b:pull  c:d:push".into()),
        };
        assert_eq!(b.scopes().collect::<Vec<_>>(), ["a:b:pull", "c:d:push"]);
    }

    // Rule: control characters cannot reach a header through the writer (no header injection).
    #[test]
    fn writer_drops_controls() {
        let value = bearer_challenge("https://x.test/\r\nSet-Cookie: a=b", Some("s\0"), None);
        let text = value.to_str().unwrap();
        assert!(!text.contains('\r') && !text.contains('\n') && !text.contains('\0'));
        assert_eq!(
            BearerChallenge::from_header(text).unwrap().unwrap().realm,
            "https://x.test/Set-Cookie: a=b"
        );
    }

    // Rule: no input makes the parser panic (a loop over tricky strings in place of a fuzzer).
    #[test]
    fn hostile_inputs_do_not_panic() {
        let pieces = [
            "Bearer",
            " ",
            ",",
            "=",
            "\"",
            "\\",
            "realm",
            "a=b",
            "\"x\\\"",
            "==",
            "\t",
            "é",
            "\u{0}",
            "token68+/=",
            "\"\"",
            ",,",
            "\\\"",
            "Basic realm=\"",
            "ñ=\"ü\"",
        ];
        let mut count = 0;
        for a in pieces {
            for b in pieces {
                for c in pieces {
                    for d in pieces {
                        let input = format!("{a}{b}{c}{d}");
                        if let Ok(cs) = parse_challenges(&input) {
                            assert!(!cs.is_empty());
                            count += 1;
                        }
                    }
                }
            }
        }
        assert!(count > 0);
    }

    // Pins how the upstream's scheme is learned: Bearer (with a URL realm) wins over Basic, across header lines.
    #[test]
    fn upstream_scheme_from_headers() {
        let mut h = http::HeaderMap::new();
        assert_eq!(UpstreamAuthScheme::from_headers(&h), None);
        h.append(
            http::header::WWW_AUTHENTICATE,
            HeaderValue::from_static(r#"Basic realm="r""#),
        );
        assert_eq!(
            UpstreamAuthScheme::from_headers(&h),
            Some(UpstreamAuthScheme::Basic)
        );
        h.append(
            http::header::WWW_AUTHENTICATE,
            HeaderValue::from_static(r#"Bearer realm="https://auth.test/token",service="reg""#),
        );
        let Some(UpstreamAuthScheme::Bearer { realm, service }) =
            UpstreamAuthScheme::from_headers(&h)
        else {
            panic!("bearer expected");
        };
        assert_eq!(realm.as_str(), "https://auth.test/token");
        assert_eq!(service.as_deref(), Some("reg"));
        let mut bad = http::HeaderMap::new();
        bad.append(
            http::header::WWW_AUTHENTICATE,
            HeaderValue::from_static(r#"Bearer realm="not a url""#),
        );
        assert_eq!(UpstreamAuthScheme::from_headers(&bad), None);
    }
}
