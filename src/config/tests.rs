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

#[test]
fn autoscale_is_off_without_its_block() {
    assert_eq!(parse(MINIMAL).unwrap().autoscale, None);
    // A bare `autoscale:` is YAML's null: the same as no block.
    let bare = parse(&format!("{MINIMAL}autoscale:\n")).unwrap();
    assert_eq!(bare.autoscale(), None);
}

#[test]
fn autoscale_takes_every_key() {
    let c = parse(&format!(
        "{MINIMAL}autoscale:\n  docker: ' tcp://docker_proxy.internal:2375 '\n  service: shop-web.1\n  \
         min: 0\n  max: 12\n  target_inflight: 20\n  up_after: 5s\n  down_after: 2m\n  \
         session_idle: 90s\n  drain_max: 10m\n  hold: 0s\n  hold_limit: 64\n  start_timeout: 45s\n"
    ))
    .unwrap();
    let secs = Duration::from_secs;
    assert_eq!(
        c.autoscale(),
        Some(&Autoscale {
            docker: "tcp://docker_proxy.internal:2375".into(),
            service: "shop-web.1".into(),
            min: 0,
            max: 12,
            target_inflight: 20,
            up_after: secs(5),
            down_after: secs(120),
            session_idle: secs(90),
            drain_max: secs(600),
            hold: Duration::ZERO,
            hold_limit: 64,
            start_timeout: secs(45),
        })
    );
    for docker in [
        "unix:///run/user/1000/docker.sock",
        "tcp://127.0.0.1:2375",
        "tcp://[::1]:2376",
        "http://docker:2375",
    ] {
        let c = parse(&format!(
            "{MINIMAL}autoscale: {{service: web, docker: '{docker}'}}"
        ))
        .unwrap();
        assert_eq!(c.autoscale().unwrap().docker, docker);
    }
}

/// The defaults, which the commented-out example in `config.yaml` shows too.
fn default_autoscale(service: &str) -> Autoscale {
    let secs = Duration::from_secs;
    Autoscale {
        docker: "unix:///var/run/docker.sock".into(),
        service: service.into(),
        min: 1,
        max: 5,
        target_inflight: 8,
        up_after: secs(2),
        down_after: secs(30),
        session_idle: secs(60),
        drain_max: secs(300),
        hold: secs(15),
        hold_limit: 1024,
        start_timeout: secs(60),
    }
}

#[test]
fn autoscale_defaults_need_only_the_service() {
    let c = parse(&format!("{MINIMAL}autoscale: {{service: webapp}}")).unwrap();
    assert_eq!(c.autoscale(), Some(&default_autoscale("webapp")));
}

/// The example block in `config.yaml` stays commented out (the demo does not autoscale), and
/// once uncommented it is valid and shows the defaults.
#[test]
fn the_repository_config_shows_the_autoscale_defaults_commented_out() {
    let text = include_str!("../../config.yaml");
    assert_eq!(parse(text).unwrap().autoscale, None);
    let start = text.find("\n# autoscale:\n").expect("an autoscale example") + 1;
    let uncommented: String = text[start..]
        .lines()
        .map(|l| l.strip_prefix("# ").unwrap_or(l))
        .map(|l| format!("{l}\n"))
        .collect();
    let c = parse(&format!("{}{uncommented}", &text[..start])).unwrap();
    assert_eq!(c.autoscale(), Some(&default_autoscale("webapp")));
}

#[test]
fn each_invalid_autoscale_value_names_its_key() {
    let cases: &[(&str, &str)] = &[
        (
            "{}",
            "autoscale.service: missing; expected the compose or swarm service",
        ),
        (
            "{service: ''}",
            "autoscale.service: \"\" is not a service name; expected",
        ),
        (
            "{service: web app}",
            "autoscale.service: \"web app\" is not a service name",
        ),
        (
            "{service: -web}",
            "autoscale.service: \"-web\" is not a service name",
        ),
        (
            "{service: web/app}",
            "autoscale.service: \"web/app\" is not a service name",
        ),
        (
            "{service: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa}",
            "autoscale.service: \"aaaa",
        ),
        (
            "{service: web, docker: 'ssh://me@host'}",
            "autoscale.docker: \"ssh://me@host\" is not a Docker engine address (the scheme \
             ssh:// is not supported); expected unix:///ABSOLUTE/PATH (like \
             unix:///var/run/docker.sock), tcp://HOST:PORT or http://HOST:PORT",
        ),
        (
            "{service: web, docker: 'npipe:////./pipe/docker_engine'}",
            "autoscale.docker: \"npipe:////./pipe/docker_engine\" is not a Docker engine address",
        ),
        (
            "{service: web, docker: 'https://host:2376'}",
            "autoscale.docker: \"https://host:2376\" is not a Docker engine address",
        ),
        (
            "{service: web, docker: 'unix://var/run/docker.sock'}",
            "autoscale.docker: \"unix://var/run/docker.sock\" is not a Docker engine address \
             (\"var/run/docker.sock\" is not an absolute path",
        ),
        (
            "{service: web, docker: '/var/run/docker.sock'}",
            "autoscale.docker: \"/var/run/docker.sock\" is not a Docker engine address (no \
             unix://, tcp:// or http:// scheme)",
        ),
        (
            "{service: web, docker: ''}",
            "autoscale.docker: \"\" is not a Docker engine address (empty)",
        ),
        (
            "{service: web, docker: 'tcp://docker'}",
            "autoscale.docker: \"tcp://docker\" is not a Docker engine address (no host:port)",
        ),
        (
            "{service: web, docker: 'tcp://docker:0'}",
            "autoscale.docker: \"tcp://docker:0\" is not a Docker engine address (the port \"0\" \
             is not 1-65535)",
        ),
        (
            "{service: web, docker: 'http://docker:65536'}",
            "autoscale.docker: \"http://docker:65536\" is not a Docker engine address (the port",
        ),
        (
            "{service: web, docker: 'tcp://bad host:2375'}",
            "autoscale.docker: \"tcp://bad host:2375\" is not a Docker engine address (\"bad \
             host\" is not a host name or IP address)",
        ),
        (
            "{service: web, docker: 'tcp://[nope]:2375'}",
            "autoscale.docker: \"tcp://[nope]:2375\" is not a Docker engine address",
        ),
        (
            "{service: web, min: -1}",
            "autoscale.min: -1 is out of range; expected 0-1000",
        ),
        (
            "{service: web, min: 1001, max: 1000}",
            "autoscale.min: 1001 is out of range; expected 0-1000",
        ),
        (
            "{service: web, max: 0}",
            "autoscale.max: 0 is out of range; expected 1-1000",
        ),
        (
            "{service: web, max: 1001}",
            "autoscale.max: 1001 is out of range",
        ),
        (
            "{service: web, min: 6}",
            "autoscale.min: 6 is more than autoscale.max (5); expected min <= max",
        ),
        (
            "{service: web, min: 3, max: 2}",
            "autoscale.min: 3 is more than autoscale.max (2)",
        ),
        (
            "{service: web, target_inflight: 0}",
            "autoscale.target_inflight: 0 is out of range; expected 1-100000",
        ),
        (
            "{service: web, target_inflight: 100001}",
            "autoscale.target_inflight: 100001 is out of range",
        ),
        (
            "{service: web, up_after: 0s}",
            "autoscale.up_after: \"0s\" is out of range; expected 1s-1h",
        ),
        (
            "{service: web, up_after: 61m}",
            "autoscale.up_after: \"61m\" is out of range; expected 1s-1h",
        ),
        (
            "{service: web, down_after: 500ms}",
            "autoscale.down_after: \"500ms\" is out of range; expected 1s-1h",
        ),
        (
            "{service: web, down_after: soon}",
            "autoscale.down_after: \"soon\" is not a duration; expected 1s-1h",
        ),
        (
            "{service: web, session_idle: 0s}",
            "autoscale.session_idle: \"0s\" is out of range; expected 1s-1day",
        ),
        (
            "{service: web, session_idle: 10m}",
            "autoscale.session_idle: 10m is longer than autoscale.drain_max (5m); expected at \
             most drain_max",
        ),
        (
            "{service: web, drain_max: 25h}",
            "autoscale.drain_max: \"25h\" is out of range; expected 1s-1day",
        ),
        (
            "{service: web, hold: 301s}",
            "autoscale.hold: \"301s\" is out of range; expected 0s-5m",
        ),
        (
            "{service: web, hold: -1s}",
            "autoscale.hold: \"-1s\" is not a duration; expected 0s-5m",
        ),
        (
            "{service: web, hold_limit: 0}",
            "autoscale.hold_limit: 0 is out of range; expected 1-1000000",
        ),
        (
            "{service: web, hold_limit: 1000001}",
            "autoscale.hold_limit: 1000001 is out of range",
        ),
        (
            "{service: web, start_timeout: 0s}",
            "autoscale.start_timeout: \"0s\" is out of range; expected 1s-1h",
        ),
        (
            "{service: web, start_timeout: 2h}",
            "autoscale.start_timeout: \"2h\" is out of range; expected 1s-1h",
        ),
        (
            "{service: web, min: lots}",
            "autoscale.min: invalid type: string \"lots\", expected i64",
        ),
        (
            "{service: web, scale_to: 3}",
            "autoscale: unknown field `scale_to`, expected one of `docker`, `service`",
        ),
    ];
    for (block, expected) in cases {
        let yaml = format!("{MINIMAL}autoscale: {block}\n");
        let got = problems(&yaml);
        assert!(
            got.iter().any(|p| p.starts_with(expected)),
            "for {block:?} expected a problem starting {expected:?}, got {got:?}"
        );
    }
}

#[test]
fn autoscale_problems_are_reported_together() {
    let got = problems(&format!(
        "{MINIMAL}autoscale: {{docker: 'ssh://host', min: 9, max: 3, session_idle: 1h, \
         hold_limit: 0}}"
    ));
    let keys: Vec<&str> = got.iter().filter_map(|p| p.split(':').next()).collect();
    assert_eq!(
        keys,
        [
            "autoscale.docker",
            "autoscale.service",
            "autoscale.hold_limit",
            "autoscale.min",
            "autoscale.session_idle"
        ],
        "{got:?}"
    );
}
