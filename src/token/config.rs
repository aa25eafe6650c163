//! The token settings (`JWT_*`, `TENANT_CLAIM`), read once at cold start:
//! which algorithms are accepted and each one's key source, the issuer and
//! audiences an IdP's token must name, the leeway and the JWKS schedule. A
//! setting that would let a forged or foreign token through stops the
//! process at start-up with a message naming the variable.

use std::time::Duration;

use jsonwebtoken::Algorithm;

use crate::clock::Clock;
use crate::config::{ConfigError, number, positive_seconds};

pub const DEFAULT_TENANT_CLAIM: &str = "custom:tenant_id";
/// HS256 keys shorter than this are refused: a guessable secret lets anyone
/// mint tokens for any tenant.
pub const MIN_HS256_SECRET_LEN: usize = 32;
/// The HS256 secret of `events/env.json`. It is public (its fixture tokens
/// are valid until 2099), so it is refused by value unless
/// `ALLOW_TEST_FIXTURES=1`, which only `make test` sets.
pub const FIXTURE_HS256_SECRET: &str = "test-only-fixture-secret-do-not-deploy-0123456789";
/// More clock skew than this is no longer skew but a longer token lifetime.
pub const MAX_LEEWAY_SECONDS: u64 = 300;

/// How bearer tokens are verified.
#[derive(Clone)]
pub struct TokenConfig {
    /// Accepted `alg` values; anything else is refused before any key is used.
    pub algorithms: Vec<Algorithm>,
    pub hs256_secret: Option<Vec<u8>>,
    pub jwks_url: Option<String>,
    /// `JWT_JWKS`: the key set itself, for a function that cannot reach the
    /// IdP (private subnets, no NAT). Used as is, never refetched.
    pub jwks_inline: Option<String>,
    pub issuer: Option<String>,
    pub audience: Vec<String>,
    pub tenant_claim: String,
    pub leeway_seconds: u64,
    /// Cognito's `token_use` the token must carry, when set.
    pub token_use: Option<TokenUse>,
    /// Least time between two JWKS refetches that are not on schedule
    /// (unknown `kid`) or that follow a failed one.
    pub jwks_refetch: Duration,
    /// Keys older than this are refetched before use; stale keys survive a
    /// failed refetch until twice this age, never longer.
    pub jwks_max_age: Duration,
    /// The time the JWKS schedule keeps (key age, refetch spacing): the
    /// system's, or a test's manual clock. Token `exp`/`nbf` are always
    /// judged against the system's wall clock.
    pub clock: Clock,
}

/// `JWT_TOKEN_USE`: which kind of Cognito token the API accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenUse {
    Id,
    Access,
}

impl TokenUse {
    /// The claim value Cognito writes.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenUse::Id => "id",
            TokenUse::Access => "access",
        }
    }
}

impl std::fmt::Debug for TokenConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenConfig")
            .field("algorithms", &self.algorithms)
            .field(
                "hs256_secret",
                &self.hs256_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("jwks_url", &self.jwks_url)
            .field("jwks_inline", &self.jwks_inline.as_ref().map(|j| j.len()))
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("tenant_claim", &self.tenant_claim)
            .field("leeway_seconds", &self.leeway_seconds)
            .field("token_use", &self.token_use)
            .field("jwks_refetch", &self.jwks_refetch)
            .field("jwks_max_age", &self.jwks_max_age)
            .field("clock", &self.clock)
            .finish()
    }
}

pub fn token_config(get: &impl Fn(&str) -> Option<String>) -> Result<TokenConfig, ConfigError> {
    let hs256_secret = get("JWT_HS256_SECRET").map(String::into_bytes);
    if let Some(secret) = &hs256_secret {
        if secret.len() < MIN_HS256_SECRET_LEN {
            return Err(ConfigError(format!(
                "JWT_HS256_SECRET must be at least {MIN_HS256_SECRET_LEN} bytes"
            )));
        }
        // Anyone can read the fixture secret in this repository: a
        // deployment that copied events/env.json would accept forged tokens.
        if secret.trim_ascii() == FIXTURE_HS256_SECRET.as_bytes()
            && get("ALLOW_TEST_FIXTURES").as_deref().map(str::trim) != Some("1")
        {
            return Err(ConfigError(
                "JWT_HS256_SECRET is the public test fixture secret of events/env.json; \
                 it is accepted only with ALLOW_TEST_FIXTURES=1 (make test)"
                    .into(),
            ));
        }
    }
    let jwks_url = get("JWT_JWKS_URL");
    if let Some(url) = &jwks_url {
        check_jwks_url(url)?;
    }
    let jwks_inline = get("JWT_JWKS");
    if jwks_url.is_some() && jwks_inline.is_some() {
        return Err(ConfigError(
            "set either JWT_JWKS_URL or JWT_JWKS (the key set inline), not both: \
             it would be unclear which keys sign valid tokens"
                .into(),
        ));
    }
    if let Some(document) = &jwks_inline {
        crate::token::check_jwks_document(document.as_bytes())
            .map_err(|e| ConfigError(format!("JWT_JWKS: {e}")))?;
    }
    let has_jwks = jwks_url.is_some() || jwks_inline.is_some();
    let algorithms = match get("JWT_ALGORITHMS") {
        Some(list) => list
            .split(',')
            .map(|name| parse_algorithm(name.trim()))
            .collect::<Result<Vec<_>, _>>()?,
        None => {
            let mut algs = Vec::new();
            if hs256_secret.is_some() {
                algs.push(Algorithm::HS256);
            }
            if has_jwks {
                algs.push(Algorithm::RS256);
            }
            algs
        }
    };
    if algorithms.is_empty() {
        return Err(ConfigError(
            "no way to verify tokens: set JWT_HS256_SECRET and/or JWT_JWKS_URL (or JWT_JWKS)"
                .into(),
        ));
    }
    for alg in &algorithms {
        match alg {
            Algorithm::HS256 if hs256_secret.is_none() => {
                return Err(ConfigError(
                    "JWT_ALGORITHMS names HS256 but JWT_HS256_SECRET is not set".into(),
                ));
            }
            Algorithm::RS256 | Algorithm::ES256 if !has_jwks => {
                return Err(ConfigError(format!(
                    "JWT_ALGORITHMS names {alg:?} but neither JWT_JWKS_URL nor JWT_JWKS is set"
                )));
            }
            _ => {}
        }
    }
    // A shared secret in a deployed function is one leak away from forged
    // tokens for every tenant; it takes an explicit opt-in.
    let allow_hs256 = match get("JWT_ALLOW_HS256").as_deref().map(str::trim) {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(ConfigError(format!(
                "JWT_ALLOW_HS256 must be true or false, got {other:?}"
            )));
        }
    };
    if algorithms.contains(&Algorithm::HS256)
        && get("AWS_LAMBDA_FUNCTION_NAME").is_some()
        && !allow_hs256
    {
        return Err(ConfigError(
            "HS256 (JWT_HS256_SECRET) is refused in Lambda unless JWT_ALLOW_HS256=true; \
             use a JWKS (JWT_JWKS_URL) with RS256/ES256"
                .into(),
        ));
    }
    let issuer = get("JWT_ISSUER").map(|iss| iss.trim().to_owned());
    let audience: Vec<String> = get("JWT_AUDIENCE")
        .map(|list| {
            list.split(',')
                .map(|a| a.trim().to_owned())
                .filter(|a| !a.is_empty())
                .collect()
        })
        .unwrap_or_default();
    // An IdP signs tokens for every app client and every user pool it
    // serves: without both checks, any of them would be accepted here.
    if has_jwks {
        let source = if jwks_url.is_some() {
            "JWT_JWKS_URL"
        } else {
            "JWT_JWKS"
        };
        if issuer.is_none() {
            return Err(ConfigError(format!(
                "JWT_ISSUER is required with {source} (Cognito: \
                 https://cognito-idp.REGION.amazonaws.com/POOL_ID)"
            )));
        }
        if audience.is_empty() {
            return Err(ConfigError(format!(
                "JWT_AUDIENCE is required with {source} (Cognito: the app client id)"
            )));
        }
    }
    let token_use = match get("JWT_TOKEN_USE").as_deref().map(str::trim) {
        None => None,
        Some("id") => Some(TokenUse::Id),
        Some("access") => Some(TokenUse::Access),
        Some(other) => {
            return Err(ConfigError(format!(
                "JWT_TOKEN_USE must be id or access, got {other:?}"
            )));
        }
    };
    let leeway_seconds = number(get, "JWT_LEEWAY_SECONDS", 30)?;
    if leeway_seconds > MAX_LEEWAY_SECONDS {
        return Err(ConfigError(format!(
            "JWT_LEEWAY_SECONDS must be at most {MAX_LEEWAY_SECONDS}, got {leeway_seconds}"
        )));
    }
    Ok(TokenConfig {
        algorithms,
        hs256_secret,
        jwks_url,
        jwks_inline,
        issuer,
        audience,
        tenant_claim: get("TENANT_CLAIM").unwrap_or_else(|| DEFAULT_TENANT_CLAIM.to_owned()),
        leeway_seconds,
        token_use,
        jwks_refetch: positive_seconds(get, "JWT_JWKS_REFETCH_SECONDS", 300)?,
        jwks_max_age: positive_seconds(get, "JWT_JWKS_MAX_AGE_SECONDS", 3600)?,
        clock: Clock::system(),
    })
}

/// The JWKS decides who may sign tokens: it must come over TLS, except from
/// this machine (tests serve it over plain HTTP on a loopback port).
pub fn check_jwks_url(raw: &str) -> Result<(), ConfigError> {
    let url = reqwest::Url::parse(raw.trim())
        .map_err(|e| ConfigError(format!("JWT_JWKS_URL is not a valid URL: {e}")))?;
    match url.scheme() {
        "https" => Ok(()),
        "http" if url.host_str().is_some_and(is_loopback_host) => Ok(()),
        "http" => Err(ConfigError(
            "JWT_JWKS_URL must use https:// (http:// only for 127.0.0.0/8, ::1 or localhost)"
                .into(),
        )),
        other => Err(ConfigError(format!(
            "JWT_JWKS_URL must use https://, got {other}://"
        ))),
    }
}

fn is_loopback_host(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => bare.eq_ignore_ascii_case("localhost"),
    }
}

fn parse_algorithm(name: &str) -> Result<Algorithm, ConfigError> {
    match name {
        "HS256" => Ok(Algorithm::HS256),
        "RS256" => Ok(Algorithm::RS256),
        "ES256" => Ok(Algorithm::ES256),
        other => Err(ConfigError(format!(
            "JWT_ALGORITHMS: unsupported algorithm {other:?} (supported: HS256, RS256, ES256)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// The token settings `vars` give, blank values unset (as
    /// `app::Config::from_lookup` reads them).
    fn config(vars: &[(&str, &str)]) -> Result<TokenConfig, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        token_config(&|k: &str| map.get(k).cloned().filter(|v| !v.trim().is_empty()))
    }

    const SECRET: (&str, &str) = ("JWT_HS256_SECRET", "0123456789abcdef0123456789abcdef");
    const JWKS: (&str, &str) = ("JWT_JWKS_URL", "https://idp.example/.well-known/jwks.json");
    const ISSUER: (&str, &str) = ("JWT_ISSUER", "https://idp.example");
    const AUDIENCE: (&str, &str) = ("JWT_AUDIENCE", "client-a, client-b");

    fn refused(vars: &[(&str, &str)]) -> String {
        match config(vars) {
            Ok(_) => panic!("accepted: {vars:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn defaults_follow_the_configured_key_sources() {
        let c = config(&[SECRET]).unwrap();
        assert_eq!(c.algorithms, vec![Algorithm::HS256]);
        assert_eq!(c.tenant_claim, "custom:tenant_id");
        let c = config(&[
            ("JWT_JWKS_URL", "http://127.0.0.1:1/jwks.json"),
            ISSUER,
            AUDIENCE,
        ])
        .unwrap();
        assert_eq!(c.algorithms, vec![Algorithm::RS256]);
    }

    #[test]
    fn refuses_what_cannot_be_verified_safely() {
        assert!(config(&[]).is_err(), "no key source");
        assert!(
            config(&[("JWT_HS256_SECRET", "short")]).is_err(),
            "weak secret"
        );
        assert!(
            config(&[SECRET, ("JWT_ALGORITHMS", "RS256")]).is_err(),
            "RS256 without JWKS"
        );
        assert!(
            config(&[SECRET, ("JWT_ALGORITHMS", "none")]).is_err(),
            "alg none"
        );
    }

    #[test]
    fn a_jwks_requires_issuer_and_audience() {
        let c = config(&[JWKS, ISSUER, AUDIENCE]).unwrap();
        assert_eq!(c.issuer.as_deref(), Some("https://idp.example"));
        assert_eq!(c.audience, vec!["client-a", "client-b"]);
        assert!(refused(&[JWKS, AUDIENCE]).contains("JWT_ISSUER"));
        assert!(refused(&[JWKS, ISSUER]).contains("JWT_AUDIENCE"));
        assert!(refused(&[JWKS, ISSUER, ("JWT_AUDIENCE", " , ")]).contains("JWT_AUDIENCE"));
        // Also when HS256 is accepted beside the JWKS.
        let both = ("JWT_ALGORITHMS", "HS256,ES256");
        assert!(refused(&[SECRET, JWKS, both, AUDIENCE]).contains("JWT_ISSUER"));
        // HS256 alone keeps them optional: the secret is ours, not an IdP's.
        assert!(config(&[SECRET]).unwrap().audience.is_empty());
    }

    #[test]
    fn token_use_is_id_or_access() {
        assert_eq!(config(&[SECRET]).unwrap().token_use, None);
        let c = config(&[SECRET, ("JWT_TOKEN_USE", "access")]).unwrap();
        assert_eq!(c.token_use, Some(TokenUse::Access));
        let c = config(&[SECRET, ("JWT_TOKEN_USE", "id")]).unwrap();
        assert_eq!(c.token_use, Some(TokenUse::Id));
        for bad in ["ID", "refresh", "any"] {
            assert!(refused(&[SECRET, ("JWT_TOKEN_USE", bad)]).contains("JWT_TOKEN_USE"));
        }
    }

    #[test]
    fn a_plain_http_jwks_is_refused_unless_it_is_on_this_machine() {
        for url in [
            "http://127.0.0.1:8080/jwks.json",
            "http://127.9.8.7/jwks.json",
            "http://[::1]:9000/jwks.json",
            "http://localhost/jwks.json",
            "http://LOCALHOST:1/jwks.json",
            "https://cognito-idp.eu-west-1.amazonaws.com/pool/.well-known/jwks.json",
        ] {
            config(&[("JWT_JWKS_URL", url), ISSUER, AUDIENCE])
                .unwrap_or_else(|e| panic!("{url}: {e}"));
        }
        for url in [
            "http://idp.example/jwks.json",
            "http://10.0.0.1/jwks.json",
            "http://localhost.evil.example/jwks.json",
            "http://127.0.0.1.evil.example/jwks.json",
            "http://[::ffff:8.8.8.8]/jwks.json",
            "ftp://127.0.0.1/jwks.json",
            "file:///etc/jwks.json",
            "not a url",
        ] {
            let e = refused(&[("JWT_JWKS_URL", url), ISSUER, AUDIENCE]);
            assert!(e.contains("JWT_JWKS_URL"), "{url}: {e}");
        }
    }

    #[test]
    fn zero_is_refused_where_it_would_switch_a_guard_off() {
        let c = config(&[JWKS, ISSUER, AUDIENCE]).unwrap();
        assert_eq!(c.jwks_refetch, Duration::from_secs(300));
        assert_eq!(c.jwks_max_age, Duration::from_secs(3600));
        assert_eq!(c.leeway_seconds, 30);
        for key in ["JWT_JWKS_REFETCH_SECONDS", "JWT_JWKS_MAX_AGE_SECONDS"] {
            assert!(refused(&[JWKS, ISSUER, AUDIENCE, (key, "0")]).contains(key));
            assert!(refused(&[JWKS, ISSUER, AUDIENCE, (key, "-1")]).contains(key));
        }
        let c = config(&[
            JWKS,
            ISSUER,
            AUDIENCE,
            ("JWT_JWKS_REFETCH_SECONDS", "1"),
            ("JWT_JWKS_MAX_AGE_SECONDS", "2"),
        ])
        .unwrap();
        assert_eq!(c.jwks_refetch, Duration::from_secs(1));
        assert_eq!(c.jwks_max_age, Duration::from_secs(2));
        // No leeway is a legitimate choice; a long one is a longer lifetime.
        let no_leeway = config(&[SECRET, ("JWT_LEEWAY_SECONDS", "0")]).unwrap();
        assert_eq!(no_leeway.leeway_seconds, 0);
        assert!(config(&[SECRET, ("JWT_LEEWAY_SECONDS", "300")]).is_ok());
        assert!(refused(&[SECRET, ("JWT_LEEWAY_SECONDS", "301")]).contains("JWT_LEEWAY_SECONDS"));
    }

    #[test]
    fn hs256_is_refused_in_lambda_unless_allowed() {
        let lambda = ("AWS_LAMBDA_FUNCTION_NAME", "tenant-users-prod");
        let e = refused(&[SECRET, lambda]);
        assert!(e.contains("JWT_ALLOW_HS256"), "{e}");
        let e = refused(&[SECRET, lambda, ("JWT_ALLOW_HS256", "false")]);
        assert!(e.contains("JWT_ALLOW_HS256"), "{e}");
        let e = refused(&[SECRET, lambda, ("JWT_ALLOW_HS256", "yes")]);
        assert!(e.contains("JWT_ALLOW_HS256"), "{e}");
        let e = refused(&[
            SECRET,
            JWKS,
            ISSUER,
            AUDIENCE,
            lambda,
            ("JWT_ALGORITHMS", "RS256,HS256"),
        ]);
        assert!(e.contains("JWT_ALLOW_HS256"), "{e}");
        let c = config(&[SECRET, lambda, ("JWT_ALLOW_HS256", "true")]).unwrap();
        assert_eq!(c.algorithms, vec![Algorithm::HS256]);
        // A secret that is set but not accepted is no risk.
        let c = config(&[
            SECRET,
            JWKS,
            ISSUER,
            AUDIENCE,
            lambda,
            ("JWT_ALGORITHMS", "RS256"),
        ]);
        assert_eq!(c.unwrap().algorithms, vec![Algorithm::RS256]);
        // Outside Lambda (local server, tests) HS256 needs no opt-in.
        assert!(config(&[SECRET]).is_ok());
    }

    #[test]
    fn the_fixture_secret_is_refused_without_allow_test_fixtures() {
        let fixture = ("JWT_HS256_SECRET", FIXTURE_HS256_SECRET);
        let padded = format!(" {FIXTURE_HS256_SECRET} ");
        for vars in [
            vec![fixture],
            vec![("JWT_HS256_SECRET", padded.as_str())],
            vec![fixture, ("ALLOW_TEST_FIXTURES", "0")],
            vec![fixture, ("ALLOW_TEST_FIXTURES", "true")],
            // JWT_ALLOW_HS256 does not make the public secret acceptable.
            vec![
                fixture,
                ("AWS_LAMBDA_FUNCTION_NAME", "f"),
                ("JWT_ALLOW_HS256", "true"),
            ],
        ] {
            let e = refused(&vars);
            assert!(e.contains("ALLOW_TEST_FIXTURES"), "{vars:?}: {e}");
        }
        let c = config(&[fixture, ("ALLOW_TEST_FIXTURES", "1")]).unwrap();
        assert_eq!(
            c.hs256_secret.as_deref(),
            Some(FIXTURE_HS256_SECRET.as_bytes())
        );
    }

    #[test]
    fn the_fixture_secret_is_the_one_in_events_env_json() {
        let env: serde_json::Value =
            serde_json::from_str(include_str!("../../events/env.json")).unwrap();
        let function = &env["TenantUsersFunction"];
        assert_eq!(function["JWT_HS256_SECRET"], FIXTURE_HS256_SECRET);
        // The fixtures run as Lambda (cargo lambda watch, sam local).
        assert_eq!(function["JWT_ALLOW_HS256"], "true");
    }

    /// A public RSA key as a JWKS: the shape Cognito publishes.
    const INLINE: &str = r#"{"keys":[{"kty":"RSA","kid":"k1","use":"sig","alg":"RS256","e":"AQAB","n":"0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"}]}"#;

    #[test]
    fn an_inline_jwks_stands_in_for_the_url() {
        let c = config(&[("JWT_JWKS", INLINE), ISSUER, AUDIENCE]).unwrap();
        assert_eq!(c.algorithms, vec![Algorithm::RS256]);
        assert_eq!(c.jwks_inline.as_deref(), Some(INLINE));
        assert_eq!(c.jwks_url, None);
        let c = config(&[
            ("JWT_JWKS", INLINE),
            ISSUER,
            AUDIENCE,
            ("JWT_ALGORITHMS", "ES256"),
        ])
        .unwrap();
        assert_eq!(c.algorithms, vec![Algorithm::ES256]);
    }

    #[test]
    fn an_inline_jwks_is_checked_like_any_jwks() {
        let both = refused(&[JWKS, ("JWT_JWKS", INLINE), ISSUER, AUDIENCE]);
        assert!(
            both.contains("JWT_JWKS_URL") && both.contains("JWT_JWKS "),
            "{both}"
        );
        let e = refused(&[("JWT_JWKS", INLINE), AUDIENCE]);
        assert!(e.contains("JWT_ISSUER") && e.contains("JWT_JWKS"), "{e}");
        let e = refused(&[("JWT_JWKS", INLINE), ISSUER]);
        assert!(e.contains("JWT_AUDIENCE") && e.contains("JWT_JWKS"), "{e}");
        for bad in [
            "not json",
            r#"{"keys":[]}"#,
            r#"{"keys":[{"kty":"unknown"}]}"#,
            r#"{"no":"keys"}"#,
        ] {
            let e = refused(&[("JWT_JWKS", bad), ISSUER, AUDIENCE]);
            assert!(e.contains("JWT_JWKS:"), "{bad}: {e}");
        }
        let huge = format!(
            r#"{{"keys":[],"pad":"{}"}}"#,
            " ".repeat(crate::token::MAX_JWKS_BYTES)
        );
        assert!(refused(&[("JWT_JWKS", &huge), ISSUER, AUDIENCE]).contains("larger"));
        // RS256 without any key source names both ways to give one.
        let e = refused(&[SECRET, ("JWT_ALGORITHMS", "RS256")]);
        assert!(e.contains("JWT_JWKS"), "{e}");
    }

    #[test]
    fn the_hs256_secret_is_not_printed() {
        let c = config(&[SECRET]).unwrap();
        assert!(!format!("{c:?}").contains("0123456789abcdef"));
    }
}
