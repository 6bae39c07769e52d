//! SSH host keys: an OpenSSH known_hosts file parsed and checked (hashed names, patterns, negations, `@revoked`), and key fingerprints as OpenSSH shows them.

use std::path::Path;

/// Checks the key `key` (SSH wire format, of type `kind`) that `host`:`port` presented against
/// the known_hosts file at `path`; why not, naming the host, the key and the file.
pub(super) fn check_host_key(
    path: &Path,
    host: &str,
    port: u16,
    kind: &str,
    key: &[u8],
) -> Result<(), String> {
    let known = KnownHosts::read(path)?;
    let shown = if port == 22 {
        host.to_string()
    } else {
        format!("[{host}]:{port}")
    };
    let fingerprint = fingerprint(key);
    match known.check(host, port, kind, key) {
        HostKey::Known => Ok(()),
        HostKey::Revoked => Err(format!(
            "host key verification failed: the key of {shown} ({kind} {fingerprint}) is marked @revoked in {}",
            path.display()
        )),
        HostKey::Changed => Err(format!(
            "host key verification failed: {shown} presented {kind} {fingerprint}, which is not the {kind} key {} lists for it; the host's key changed or someone is in between, so the connection was refused",
            path.display()
        )),
        HostKey::Unknown { listed } if !listed.is_empty() => Err(format!(
            "host key verification failed: {shown} presented {kind} {fingerprint}, and {} lists only {} keys for it; add its {kind} key (`ssh-keyscan -p {port} {host}` prints every key type)",
            path.display(),
            listed.join(", ")
        )),
        HostKey::Unknown { .. } => Err(format!(
            "host key verification failed: {shown} is not in {} (it presented {kind} {fingerprint}); add it after checking that fingerprint, e.g. with `ssh-keyscan -p {port} {host}`",
            path.display()
        )),
    }
}

/// `SHA256:<base64>`, as OpenSSH shows a key.
fn fingerprint(key: &[u8]) -> String {
    use base64::Engine as _;
    use sha2::Digest as _;
    let hash = sha2::Sha256::digest(key);
    format!(
        "SHA256:{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(hash)
    )
}

/// What a known_hosts file says of a host's key.
#[derive(Debug, PartialEq, Eq)]
enum HostKey {
    Known,
    /// The key matches an `@revoked` line.
    Revoked,
    /// The host is listed with another key of the same type.
    Changed,
    /// The host is not listed with a key of this type; `listed` names the types it is listed with.
    Unknown {
        listed: Vec<String>,
    },
}

/// An OpenSSH known_hosts file (sshd(8), "SSH_KNOWN_HOSTS FILE FORMAT").
#[derive(Debug, Default)]
pub(super) struct KnownHosts {
    entries: Vec<KnownHost>,
}

#[derive(Debug)]
struct KnownHost {
    marker: Marker,
    hosts: Hosts,
    kind: String,
    key: Vec<u8>,
}

#[derive(Debug, PartialEq, Eq)]
enum Marker {
    None,
    Revoked,
    CertAuthority,
}

#[derive(Debug)]
enum Hosts {
    /// `|1|salt|hash`: HMAC-SHA1 of the host name (as `host` or `[host]:port`) keyed by salt.
    Hashed { salt: Vec<u8>, hash: Vec<u8> },
    /// Comma-separated patterns, each maybe negated with `!`.
    Patterns(Vec<(bool, String)>),
}

impl KnownHosts {
    pub(super) fn read(path: &Path) -> Result<KnownHosts, String> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            format!(
                "gitAuth.knownHosts: cannot read {}: {}",
                path.display(),
                e.kind()
            )
        })?;
        KnownHosts::parse(&text).map_err(|(line, why)| {
            format!("gitAuth.knownHosts: {} line {line}: {why}", path.display())
        })
    }

    /// Parses the file; the first malformed line, 1-based, and why.
    fn parse(text: &str) -> Result<KnownHosts, (usize, String)> {
        use base64::Engine as _;
        let b64 = &base64::engine::general_purpose::STANDARD;
        let mut entries = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |why: &str| (i + 1, why.to_string());
            let mut fields = line.split_whitespace();
            let mut first = fields.next().unwrap_or_default();
            let marker = match first {
                "@revoked" => Marker::Revoked,
                "@cert-authority" => Marker::CertAuthority,
                m if m.starts_with('@') => return Err(bad("unknown marker")),
                _ => Marker::None,
            };
            if marker != Marker::None {
                first = fields.next().ok_or_else(|| bad("a marker without hosts"))?;
            }
            let (Some(kind), Some(key)) = (fields.next(), fields.next()) else {
                return Err(bad("expected `hosts key-type base64-key`"));
            };
            let key = b64.decode(key).map_err(|_| bad("the key is not base64"))?;
            let hosts = match first.strip_prefix("|1|") {
                Some(hashed) => {
                    let (salt, hash) = hashed
                        .split_once('|')
                        .ok_or_else(|| bad("a hashed host without its hash"))?;
                    let salt = b64
                        .decode(salt)
                        .map_err(|_| bad("a hashed host's salt is not base64"))?;
                    let hash = b64
                        .decode(hash)
                        .map_err(|_| bad("a hashed host's hash is not base64"))?;
                    Hosts::Hashed { salt, hash }
                }
                None => Hosts::Patterns(
                    first
                        .split(',')
                        .filter(|p| !p.is_empty())
                        .map(|p| match p.strip_prefix('!') {
                            Some(p) => (true, p.to_ascii_lowercase()),
                            None => (false, p.to_ascii_lowercase()),
                        })
                        .collect(),
                ),
            };
            entries.push(KnownHost {
                marker,
                hosts,
                kind: kind.to_string(),
                key,
            });
        }
        Ok(KnownHosts { entries })
    }

    fn check(&self, host: &str, port: u16, kind: &str, key: &[u8]) -> HostKey {
        // As OpenSSH writes the name: `host` on port 22, `[host]:port` elsewhere.
        let name = if port == 22 {
            host.to_ascii_lowercase()
        } else {
            format!("[{}]:{port}", host.to_ascii_lowercase())
        };
        let matching = || self.entries.iter().filter(|e| e.hosts.matches(&name));
        if matching().any(|e| e.marker == Marker::Revoked && e.key == key) {
            return HostKey::Revoked;
        }
        let plain = || matching().filter(|e| e.marker == Marker::None);
        if plain().any(|e| e.key == key) {
            return HostKey::Known;
        }
        if plain().any(|e| e.kind == kind) {
            return HostKey::Changed;
        }
        let mut listed: Vec<String> = plain().map(|e| e.kind.clone()).collect();
        listed.sort();
        listed.dedup();
        HostKey::Unknown { listed }
    }
}

impl Hosts {
    fn matches(&self, name: &str) -> bool {
        match self {
            Hosts::Hashed { salt, hash } => {
                use hmac::{KeyInit as _, Mac as _};
                let Ok(mut mac) = hmac::Hmac::<sha1::Sha1>::new_from_slice(salt) else {
                    return false;
                };
                mac.update(name.as_bytes());
                mac.verify_slice(hash).is_ok()
            }
            Hosts::Patterns(patterns) => {
                // A negated pattern that matches rules the line out, whatever else matches.
                let mut hit = false;
                for (negated, pattern) in patterns {
                    if glob(pattern.as_bytes(), name.as_bytes()) {
                        if *negated {
                            return false;
                        }
                        hit = true;
                    }
                }
                hit
            }
        }
    }
}

/// Whether `text` matches `pattern`, where `*` is any run of characters and `?` any one.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == b'?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p.min(pattern.len())..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two ed25519 public keys made by ssh-keygen, and OpenSSH's own hashing (`ssh-keygen -H`)
    /// of `[127.0.0.1]:2222` and `git.example.com` with the first.
    const KEY: &str = "AAAAC3NzaC1lZDI1NTE5AAAAICG2mYuuHwF3XDehJdTmK+7BQDJ5wwXz/a3ltl2AVHWN";
    const OTHER: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIONT6lBMBGeg3qFdMxhXgptatwRr+pgT+yzyxe3bXNUX";
    const HASHED: &str = "\
|1|RW8X67gEJWNiphvQa2QApZyA528=|N9uOaeQgE5dB3Mda7ZTbFMx71dY= ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAICG2mYuuHwF3XDehJdTmK+7BQDJ5wwXz/a3ltl2AVHWN
|1|DTU9G+WmGrfChB6mqdj3Tkn+Gq0=|vzibyscAMLLRR30aFM5fGvizt98= ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAICG2mYuuHwF3XDehJdTmK+7BQDJ5wwXz/a3ltl2AVHWN
";

    fn key(b64: &str) -> Vec<u8> {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap()
    }

    #[test]
    fn known_hosts_entries_match_by_name_port_and_key() {
        let file = format!(
            "# a comment\n\n[127.0.0.1]:2222 ssh-ed25519 {KEY}\n\
             git.example.com,10.0.0.7 ssh-ed25519 {KEY} a comment\n\
             *.corp.example,!evil.corp.example ssh-ed25519 {KEY}\n\
             rsa-only.example ssh-rsa {OTHER}\n\
             @revoked * ssh-ed25519 {OTHER}\n\
             @cert-authority *.example ssh-ed25519 {OTHER}\n"
        );
        let known = KnownHosts::parse(&file).unwrap();
        let hashed = KnownHosts::parse(HASHED).unwrap();
        let (ed, k, o) = ("ssh-ed25519", key(KEY), key(OTHER));
        let check = |known: &KnownHosts, host: &str, port: u16, key: &[u8], want: HostKey| {
            assert_eq!(known.check(host, port, ed, key), want, "{host}:{port}");
        };
        let unknown = || HostKey::Unknown { listed: vec![] };
        for known in [&known, &hashed] {
            check(known, "127.0.0.1", 2222, &k, HostKey::Known);
            check(known, "git.example.com", 22, &k, HostKey::Known);
            check(known, "GIT.example.com", 22, &k, HostKey::Known);
            // The port is part of the name: `[host]:port` entries are not for port 22 and back.
            check(known, "127.0.0.1", 22, &k, unknown());
            check(known, "git.example.com", 2222, &k, unknown());
            check(known, "127.0.0.2", 2222, &k, unknown());
        }
        check(&known, "10.0.0.7", 22, &k, HostKey::Known);
        check(&known, "build.corp.example", 22, &k, HostKey::Known);
        check(&known, "evil.corp.example", 22, &k, unknown());
        // Another key where one of this type is listed: changed; revoked wherever it shows.
        let fresh = key("AAAAC3NzaC1lZDI1NTE5AAAAIFoBAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
        check(&known, "git.example.com", 22, &fresh, HostKey::Changed);
        check(&hashed, "git.example.com", 22, &fresh, HostKey::Changed);
        check(&known, "git.example.com", 22, &o, HostKey::Revoked);
        check(
            &known,
            "rsa-only.example",
            22,
            &k,
            HostKey::Unknown {
                listed: vec!["ssh-rsa".into()],
            },
        );
    }

    #[test]
    fn malformed_known_hosts_lines_are_named() {
        let check = |text: &str, line: usize| {
            let (at, why) = KnownHosts::parse(text).unwrap_err();
            assert_eq!(at, line, "{text:?}: {why}");
        };
        check(&format!("h ssh-ed25519 {KEY}\nhost-only\n"), 2);
        check("h ssh-ed25519 not*base64\n", 1);
        check(&format!("@weird h ssh-ed25519 {KEY}\n"), 1);
        check(&format!("|1|abc ssh-ed25519 {KEY}\n"), 1);
        assert!(KnownHosts::parse("# only comments\n\n").is_ok());
    }

    #[test]
    fn globs() {
        for (p, t, want) in [
            ("*", "anything", true),
            ("*.example", "a.b.example", true),
            ("*.example", "example", false),
            ("h?st", "host", true),
            ("h?st", "hoost", false),
            ("[10.0.0.*]:22?", "[10.0.0.9]:222", true),
            ("[10.0.0.*]:22?", "[10.0.0.9]:2222", false),
            ("a*b*c", "aXbYbZc", true),
            ("a*b*c", "aXbYbZ", false),
        ] {
            assert_eq!(glob(p.as_bytes(), t.as_bytes()), want, "{p} {t}");
        }
    }

    #[test]
    fn fingerprints_are_openssh_style() {
        // `ssh-keygen -lf` of the first key.
        assert_eq!(
            fingerprint(&key(KEY)),
            "SHA256:y2zU5YjE5PT3uAoa55hjIEL/gERjzxcdhLLsf3WbYj8"
        );
    }
}
