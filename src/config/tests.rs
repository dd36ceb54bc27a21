//! Validation as a table: every accepted form, every refusal naming its key.

use super::*;

const MINIMAL: &str = "discovery:\n  subnets: [127.77.0.0/24]\n";

fn problems(yaml: &str) -> Vec<String> {
    match parse(yaml) {
        Ok(_) => vec![],
        Err(e) => e
            .problems
            .iter()
            .map(|p| format!("{}: {}", p.key, p.message))
            .collect(),
    }
}

#[test]
fn defaults_fill_everything_but_subnets() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(c.listen, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(c.discovery.port, 3000);
    assert_eq!(c.discovery.health_path, "/health");
    assert_eq!(c.discovery.expect_status, 200..=399);
    assert_eq!(c.discovery.check_interval, Duration::from_secs(1));
    assert_eq!(c.discovery.sweep_interval, Duration::from_secs(2));
    assert_eq!(c.discovery.timeout, Duration::from_millis(500));
    assert_eq!((c.discovery.rise, c.discovery.fall), (2, 2));
    assert_eq!(c.discovery.concurrency, 256);
    assert!(!c.discovery.allow_routed);
    assert_eq!(c.balance.key, Key::Cookie("sweeplb".into()));
    assert_eq!(c.timeouts.header_read, Duration::from_secs(10));
    assert_eq!(c.timeouts.body, Duration::from_secs(30));
    assert_eq!(c.limits.max_request_head, 16 * 1024);
    assert_eq!(c.address_count(), 254);
}

#[test]
fn the_repository_config_is_valid() {
    parse(include_str!("../../config.yaml")).unwrap();
}

#[test]
fn each_invalid_value_names_its_key() {
    let cases: &[(&str, &str)] = &[
        (
            "discovery: {subnets: [127.77.0.0/33]}",
            "discovery.subnets: \"127.77.0.0/33\" is not a CIDR",
        ),
        (
            "discovery: {subnets: [127.77.0.1/24]}",
            "discovery.subnets: 127.77.0.1/24 has host bits set",
        ),
        ("discovery: {subnets: []}", "discovery.subnets: empty"),
        ("discovery: {port: 3000}", "discovery.subnets: missing"),
        (
            "discovery: {subnets: [127.77.0.0/24], port: 0}",
            "discovery.port: 0 is out of range; expected 1-65535",
        ),
        (
            "discovery: {subnets: [127.77.0.0/24], port: 70000}",
            "discovery.port: 70000 is out of range",
        ),
        (
            "discovery: {subnets: [127.77.0.0/24], rise: 0}",
            "discovery.rise: 0 is out of range; expected 1-100",
        ),
        (
            "discovery: {subnets: [127.77.0.0/24], fall: 0}",
            "discovery.fall: 0 is out of range",
        ),
        (
            "discovery: {subnets: [127.77.0.0/24], concurrency: 0}",
            "discovery.concurrency: 0 is out of range",
        ),
        (
            "discovery: {subnets: [127.77.0.0/24], timeout: 1s}",
            "discovery.timeout: 1s must be shorter than discovery.check_interval",
        ),
        (
            "discovery: {subnets: [127.77.0.0/24], timeout: soon}",
            "discovery.timeout: \"soon\" is not a duration",
        ),
        (
            "discovery: {subnets: [127.77.0.0/24], check_interval: 0s}",
            "discovery.check_interval: 0 is not allowed",
        ),
        (
            "discovery: {subnets: [127.77.0.0/24], health_path: health}",
            "discovery.health_path: \"health\" is not a request path",
        ),
        (
            "discovery: {subnets: [127.77.0.0/24], expect_status: 99}",
            "discovery.expect_status: 99 is not a status or range",
        ),
        (
            "discovery: {subnets: [127.77.0.0/24], expect_status: 399-200}",
            "discovery.expect_status: \"399-200\"",
        ),
        (
            "discovery: {subnets: [127.77.0.0/24], expect_body: ''}",
            "discovery.expect_body: empty",
        ),
        (
            "discovery: {subnets: [127.77.0.0/24], exclude: [nope]}",
            "discovery.exclude: \"nope\" is not a CIDR",
        ),
        (
            "discovery: {subnets: [127.0.0.0/8]}",
            "discovery.subnets: 16777214 addresses cannot be swept every 2s",
        ),
        (
            "discovery: {subnets: ['::/64']}",
            "discovery.subnets: ::/64 has 18446744073709551616 addresses; at most",
        ),
        (
            "listen: localhost\ndiscovery: {subnets: [127.77.0.0/24]}",
            "listen: \"localhost\" is not an address",
        ),
        (
            "discovery: {subnets: [127.77.0.0/24]}\nbalance: {key: hash}",
            "balance.key: \"hash\" is not a key",
        ),
        (
            "discovery: {subnets: [127.77.0.0/24]}\nbalance: {key: 'header:'}",
            "balance.key: \"header:\" is not a key",
        ),
        (
            "discovery: {subnets: [127.77.0.0/24]}\nbalance: {cookie: 'a b'}",
            "balance.cookie: \"a b\" is not a cookie name",
        ),
        (
            "discovery: {subnets: [127.77.0.0/24]}\ntimeouts: {idle: -1s}",
            "timeouts.idle: \"-1s\" is not a duration",
        ),
        (
            "discovery: {subnets: [127.77.0.0/24], color: blue}",
            "discovery: unknown field `color`, expected one of `subnets`",
        ),
        (
            "listen: [1, 2]\n",
            "listen: invalid type: sequence, expected a string",
        ),
        ("listen: \"open\ndiscovery: {}\n", "config: "),
        (
            "discovery: {subnets: [127.77.0.0/24], check_interval: 300000000000y}",
            "discovery.check_interval: \"300000000000y\" is too long; expected at most 3650 days",
        ),
        (
            "discovery: {subnets: [127.77.0.0/24]}\ntimeouts: {body: 11y}",
            "timeouts.body: \"11y\" is too long",
        ),
        (
            "discovery: {subnets: [127.77.0.0/24]}\nbalance: {cookie_max_age: soon}",
            "balance.cookie_max_age: \"soon\" is not a duration",
        ),
        (
            "discovery: {subnets: [127.77.0.0/24]}\nbalance: {repin_after: 0s}",
            "balance.repin_after: 0 is not allowed",
        ),
        (
            "discovery: {subnets: [127.77.0.0/24]}\nbalance: {session_idle: -1}",
            "balance.session_idle: \"-1\" is not a duration",
        ),
        (
            "discovery: {subnets: [127.77.0.0/24]}\nbalance: {bounded_load: 1.0}",
            "balance.bounded_load: 1 is out of range; expected a factor above 1",
        ),
        (
            "discovery: {subnets: [127.77.0.0/24]}\nbalance: {bounded_load: lots}",
            "balance.bounded_load: invalid type: string \"lots\", expected f64",
        ),
        (
            "discovery: {subnets: [127.77.0.0/24]}\nbalance: {pin_secret: short}",
            "balance.pin_secret: shorter than 16 characters",
        ),
        (
            "discovery: {subnets: [127.77.0.0/24]}\nbalance: {key: client_ip, bounded_load: 1.5}",
            "balance.bounded_load: only applies to balance.key: cookie",
        ),
        (
            "discovery: {subnets: [127.77.0.0/24]}\nbalance: {key: 'header:X-User', repin_after: 1h}",
            "balance.repin_after: only applies to balance.key: cookie",
        ),
        (
            "discovery: {subnets: [127.77.0.0/24]}\nlimits: {max_request_head: 512}",
            "limits.max_request_head: 512 is out of range; expected 1024-262144 bytes",
        ),
        (
            "discovery: {subnets: [127.77.0.0/24]}\nlimits: {max_request_head: 1MiB}",
            "limits.max_request_head: \"1MiB\" is not a size; expected 1024-262144 bytes",
        ),
        (
            "discovery: {subnets: [127.77.0.0/24]}\nlimits: {max_request_head: 300KiB}",
            "limits.max_request_head: 307200 is out of range",
        ),
        (
            "discovery: {subnets: [127.77.0.0/24]}\nlimits: {max_request_head: 99999999999999999KiB}",
            "limits.max_request_head: \"99999999999999999KiB\" is not a size",
        ),
        (
            "discovery: {subnets: [127.77.0.0/24]}\nlimits: {max_request_head: 1.5}",
            "limits.max_request_head: \"1.5\" is not a size; expected 1024-262144 bytes",
        ),
        (
            "discovery: {subnets: [127.77.0.0/24]}\nlimits: {max_request_head: [1]}",
            "limits.max_request_head: \"- 1\" is not a size",
        ),
        (
            "discovery: {subnets: [127.77.0.0/24]}\nlimits: {max_head: 1}",
            "limits: unknown field `max_head`, expected `max_request_head`",
        ),
    ];
    for (yaml, expected) in cases {
        let got = problems(yaml);
        assert!(
            got.iter().any(|p| p.starts_with(expected)),
            "for {yaml:?} expected a problem starting {expected:?}, got {got:?}"
        );
    }
}

#[test]
fn pinning_keys_are_off_unless_set() {
    let c = parse(MINIMAL).unwrap();
    let b = &c.balance;
    assert_eq!(b.session_idle, Duration::from_secs(60));
    assert_eq!(
        (b.cookie_max_age, b.repin_after, b.bounded_load),
        (None, None, None)
    );
    assert!(b.pin_secret.is_none());
    let c = parse(
        "discovery: {subnets: [127.77.0.0/24]}\nbalance: {cookie_max_age: 1h, repin_after: 30m, \
         session_idle: 5m, bounded_load: 1.25, pin_secret: 0123456789abcdef0123}",
    )
    .unwrap();
    let b = &c.balance;
    assert_eq!(b.cookie_max_age, Some(Duration::from_secs(3600)));
    assert_eq!(b.repin_after, Some(Duration::from_secs(1800)));
    assert_eq!(b.session_idle, Duration::from_secs(300));
    assert_eq!(b.bounded_load, Some(1.25));
    // The secret is used, never printed.
    assert!(!format!("{c:?}").contains("0123456789abcdef"), "{c:?}");
}

/// A file of this test's own in the temp directory, removed on drop.
struct TempFile(std::path::PathBuf);

impl TempFile {
    fn new(name: &str, content: &[u8]) -> TempFile {
        let path = std::env::temp_dir().join(format!("sweeplb-{}-{name}", std::process::id()));
        std::fs::write(&path, content).unwrap();
        TempFile(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn identity_secret_inline_or_from_a_file() {
    let c = parse(MINIMAL).unwrap();
    assert!(c.discovery.identity_secret.is_none());
    let c = parse(
        "discovery: {subnets: [127.77.0.0/24], identity_secret: ' 0123456789abcdef-inline '}",
    )
    .unwrap();
    let secret = c.discovery.identity_secret.as_ref().unwrap();
    assert_eq!(secret.0, "0123456789abcdef-inline");
    // Used, never printed.
    assert!(!format!("{c:?}").contains("0123456789abcdef"), "{c:?}");

    let file = TempFile::new("secret-ok", b"0123456789abcdef-from-a-file\n");
    let c = parse(&format!(
        "discovery: {{subnets: [127.77.0.0/24], identity_secret_file: '{}'}}",
        file.0.display()
    ))
    .unwrap();
    let secret = c.discovery.identity_secret.as_ref().unwrap();
    assert_eq!(secret.0, "0123456789abcdef-from-a-file");
    assert!(!format!("{c:?}").contains("from-a-file"), "{c:?}");
}

#[test]
fn identity_secret_problems_name_the_key_never_the_secret() {
    let short = TempFile::new("secret-short", b"short-secret\n\n");
    let binary = TempFile::new("secret-binary", &[0xff, 0xfe, 0x00, 0x01]);
    let missing = std::env::temp_dir().join("sweeplb-no-such-secret-file");
    let cases: Vec<(String, String)> = vec![
        (
            "discovery: {subnets: [127.77.0.0/24], identity_secret: short-secret}".into(),
            "discovery.identity_secret: shorter than 16 characters".into(),
        ),
        (
            format!(
                "discovery: {{subnets: [127.77.0.0/24], identity_secret: 0123456789abcdef, \
                 identity_secret_file: '{}'}}",
                short.0.display()
            ),
            "discovery.identity_secret_file: set together with discovery.identity_secret; \
             expected one of them, not both"
                .into(),
        ),
        (
            format!(
                "discovery: {{subnets: [127.77.0.0/24], identity_secret_file: '{}'}}",
                short.0.display()
            ),
            format!(
                "discovery.identity_secret_file: {}: shorter than 16 characters",
                short.0.display()
            ),
        ),
        (
            format!(
                "discovery: {{subnets: [127.77.0.0/24], identity_secret_file: '{}'}}",
                missing.display()
            ),
            format!(
                "discovery.identity_secret_file: cannot read {}: ",
                missing.display()
            ),
        ),
        (
            format!(
                "discovery: {{subnets: [127.77.0.0/24], identity_secret_file: '{}'}}",
                binary.0.display()
            ),
            format!(
                "discovery.identity_secret_file: cannot read {}: ",
                binary.0.display()
            ),
        ),
        (
            "discovery: {subnets: [127.77.0.0/24], identity_secret_file: ''}".into(),
            "discovery.identity_secret_file: empty; expected the path".into(),
        ),
    ];
    for (yaml, expected) in &cases {
        let got = problems(yaml);
        assert!(
            got.iter().any(|p| p.starts_with(expected.as_str())),
            "for {yaml:?} expected a problem starting {expected:?}, got {got:?}"
        );
        assert!(
            !got.iter().any(|p| p.contains("short-secret")),
            "a problem shows the secret: {got:?}"
        );
    }
}

#[test]
fn all_problems_are_reported_at_once() {
    let got = problems("discovery: {subnets: [127.77.0.0/24], port: 0, rise: 0, fall: 0}");
    assert_eq!(got.len(), 3, "{got:?}");
}

#[test]
fn status_accepts_a_code_or_a_range() {
    let c = parse("discovery: {subnets: [127.77.0.0/24], expect_status: 204}").unwrap();
    assert_eq!(c.discovery.expect_status, 204..=204);
    let c = parse("discovery: {subnets: [127.77.0.0/24], expect_status: '200-204'}").unwrap();
    assert_eq!(c.discovery.expect_status, 200..=204);
}

#[test]
fn key_modes() {
    let c =
        parse("discovery: {subnets: [127.77.0.0/24]}\nbalance: {key: 'header:X-User'}").unwrap();
    assert_eq!(
        c.balance.key,
        Key::Header(HeaderName::from_static("x-user"))
    );
    let c = parse("discovery: {subnets: [127.77.0.0/24]}\nbalance: {key: client_ip}").unwrap();
    assert_eq!(c.balance.key, Key::ClientIp);
}

#[test]
fn a_large_range_is_accepted_when_the_rate_allows_it() {
    let yaml = "discovery: {subnets: [127.78.0.0/16], concurrency: 16384, timeout: 500ms, check_interval: 1s, sweep_interval: 2s}";
    assert_eq!(parse(yaml).unwrap().address_count(), 65534);
}

#[test]
fn routed_ranges_are_refused_unless_allowed() {
    let attached: Vec<IpNet> = vec![
        "127.0.0.0/8".parse().unwrap(),
        "198.51.100.0/24".parse().unwrap(),
    ];
    assert!(parse_for("discovery: {subnets: [198.51.100.128/25]}", &attached).is_ok());
    let err = parse_for("discovery: {subnets: [203.0.113.0/24]}", &attached)
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("discovery.subnets: 203.0.113.0/24 is neither loopback nor a network"),
        "{err}"
    );
    assert!(err.contains("allow_routed: true"), "{err}");
    let allowed = "discovery: {subnets: [203.0.113.0/24], allow_routed: true}";
    assert!(parse_for(allowed, &attached).is_ok());
}

#[test]
fn host_counts() {
    let n = |s: &str| host_count(&s.parse().unwrap());
    assert_eq!(n("127.77.0.0/24"), 254);
    assert_eq!(n("127.77.0.0/31"), 2);
    assert_eq!(n("127.77.0.5/32"), 1);
    assert_eq!(n("::1/128"), 1);
    assert_eq!(n("fd00::/120"), 256);
}

#[test]
fn max_request_head_takes_bytes_or_kib() {
    let at = |v: &str| {
        parse(&format!("{MINIMAL}limits:\n  max_request_head: {v}\n"))
            .unwrap()
            .limits
            .max_request_head
    };
    assert_eq!(at("8192"), 8192);
    assert_eq!(at("32KiB"), 32 * 1024);
    assert_eq!(at("'1024'"), 1024);
}

/// Deep flow nesting is refused before the YAML parser sees it, in a moment: before the limit,
/// 20,000 nested `{a: ` took the parser about 6 s in a debug build (60,000: close to a minute).
#[test]
fn deeply_nested_flow_collections_are_refused_at_once() {
    let nested = format!("{}{}", "{a: ".repeat(20_000), "}".repeat(20_000));
    // Quoting hides nothing: every `[` and `{` counts.
    let quoted = "[\"]\", ".repeat(2_000);
    for text in [nested, quoted] {
        let started = std::time::Instant::now();
        let got = problems(&text);
        assert!(
            got.iter()
                .any(|p| p.starts_with("config: ") && p.contains("expected at most 1000")),
            "{got:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
    }
}

#[test]
fn a_config_file_is_read_up_to_its_cap() {
    let dir = std::env::temp_dir().join(format!("sweeplb-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let big = dir.join("big.yaml");
    let mut text = MINIMAL.to_string();
    text.push_str(&"#".repeat(MAX_CONFIG_BYTES as usize));
    std::fs::write(&big, text).unwrap();
    let not_text = dir.join("binary.yaml");
    std::fs::write(&not_text, [0xff, 0xfe, 0x00]).unwrap();
    let just_fits = dir.join("fits.yaml");
    let mut text = MINIMAL.to_string();
    text.push_str(&"#".repeat(MAX_CONFIG_BYTES as usize - MINIMAL.len()));
    std::fs::write(&just_fits, text).unwrap();
    let zero = std::path::Path::new("/dev/zero");
    for (path, expected) in [
        (
            big.as_path(),
            "is larger than 1048576 bytes; expected at most 1 MiB",
        ),
        (zero, "is larger than 1048576 bytes"),
        (not_text.as_path(), "is not UTF-8 text"),
    ] {
        let e = load(path).unwrap_err().to_string();
        assert!(
            e.starts_with("config: ") && e.contains(expected),
            "{path:?}: {e}"
        );
    }
    load(&just_fits).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn admin_and_log_defaults_serve_everyone_on_the_public_listener_in_text() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(c.admin.listen, None);
    let everyone: Vec<IpNet> = vec!["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()];
    assert_eq!(c.admin.allow, everyone);
    assert_eq!(c.admin.keep_departed, Duration::from_secs(600));
    assert_eq!(c.log.format, LogFormat::Text);
    assert!(!c.log.access);
    let c = parse(
        "discovery: {subnets: [127.77.0.0/24]}\n\
         admin: {listen: 127.0.0.1:9090, allow: [127.0.0.1, 10.0.0.0/8], keep_departed: 30s}\n\
         log: {format: json, access: true}",
    )
    .unwrap();
    assert_eq!(c.admin.listen, Some("127.0.0.1:9090".parse().unwrap()));
    assert_eq!(c.admin.allow.len(), 2);
    assert_eq!(c.admin.allow[0], "127.0.0.1/32".parse::<IpNet>().unwrap());
    assert_eq!(c.log.format, LogFormat::Json);
    assert!(c.log.access);
}

#[test]
fn admin_and_log_refusals_name_their_keys() {
    for (yaml, expected) in [
        (
            "discovery: {subnets: [127.77.0.0/24]}\nadmin: {listen: nowhere}",
            "admin.listen: \"nowhere\" is not an address",
        ),
        (
            "listen: 127.0.0.1:8080\ndiscovery: {subnets: [127.77.0.0/24]}\nadmin: {listen: 127.0.0.1:8080}",
            "admin.listen: 127.0.0.1:8080 is the public listen address",
        ),
        (
            "discovery: {subnets: [127.77.0.0/24]}\nadmin: {allow: [everyone]}",
            "admin.allow: \"everyone\" is not a CIDR",
        ),
        (
            "discovery: {subnets: [127.77.0.0/24]}\nadmin: {keep_departed: 0s}",
            "admin.keep_departed: 0 is not allowed",
        ),
        (
            "discovery: {subnets: [127.77.0.0/24]}\nlog: {format: xml}",
            "log.format: \"xml\" is not a log format; expected text or json",
        ),
        (
            "discovery: {subnets: [127.77.0.0/24]}\nlog: {acess: true}",
            "log: unknown field `acess`",
        ),
    ] {
        let found = problems(yaml);
        assert!(
            found.iter().any(|p| p.starts_with(expected)),
            "{yaml}: expected {expected:?}, got {found:?}"
        );
    }
}
