//! Registration files: parsing, checking and namespace matching.
//!
//! A file is the spec's registration format (the YAML Synapse's `app_service_config_files`
//! loads). Every problem is reported with the file and the field, and loading is all or nothing:
//! [`load`] returns the registrations of every file or the first error.

use std::path::{Path, PathBuf};

use regex::Regex;
use serde::Deserialize;
use serde_json::Value;

/// One namespace entry: names matching `regex` belong to the appservice; `exclusive` ones to it
/// alone.
#[derive(Debug, Clone)]
pub struct Namespace {
    /// Whether only this appservice may own names in it.
    pub exclusive: bool,
    /// The regex as written in the file.
    pub source: String,
    /// Compiled, anchored at the start as Synapse matches (`re.match`).
    regex: Regex,
}

impl Namespace {
    /// Whether `name` is in this namespace.
    pub fn is_match(&self, name: &str) -> bool {
        self.regex.is_match(name)
    }
}

/// The three kinds of namespaces.
#[derive(Debug, Clone, Default)]
pub struct Namespaces {
    /// User ids.
    pub users: Vec<Namespace>,
    /// Room aliases.
    pub aliases: Vec<Namespace>,
    /// Room ids.
    pub rooms: Vec<Namespace>,
}

/// Which namespace list a name is matched against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `namespaces.users`
    Users,
    /// `namespaces.aliases`
    Aliases,
    /// `namespaces.rooms`
    Rooms,
}

impl Namespaces {
    fn list(&self, kind: Kind) -> &[Namespace] {
        match kind {
            Kind::Users => &self.users,
            Kind::Aliases => &self.aliases,
            Kind::Rooms => &self.rooms,
        }
    }

    /// Whether any namespace of `kind` holds `name`.
    pub fn matches(&self, kind: Kind, name: &str) -> bool {
        self.list(kind).iter().any(|n| n.is_match(name))
    }

    /// Whether an exclusive namespace of `kind` holds `name`.
    pub fn exclusive(&self, kind: Kind, name: &str) -> bool {
        self.list(kind).iter().any(|n| n.exclusive && n.is_match(name))
    }
}

/// A loaded registration.
#[derive(Debug, Clone)]
pub struct Registration {
    /// The file it came from (for messages).
    pub file: PathBuf,
    /// Unique id (`id`).
    pub id: String,
    /// Where transactions and queries go; `None`: the appservice receives nothing.
    pub url: Option<String>,
    /// The token the appservice authenticates with.
    pub as_token: String,
    /// The token we authenticate to the appservice with.
    pub hs_token: String,
    /// The appservice's own user, `@<sender_localpart>:<server>`.
    pub sender: ruma::OwnedUserId,
    /// Namespaces.
    pub namespaces: Namespaces,
    /// Whether masqueraded users are rate limited (the sender never is).
    pub rate_limited: bool,
    /// Third-party protocols it serves.
    pub protocols: Vec<String>,
    /// Typing, receipts, presence and to-device in transactions (MSC2409 / MSC4203).
    pub receive_ephemeral: bool,
    /// Device lists, one-time key counts and fallback key types in transactions (MSC3202).
    pub msc3202: bool,
}

impl Registration {
    /// Whether this appservice claims `user_id` (its sender or a user namespace).
    pub fn is_user(&self, user_id: &str) -> bool {
        user_id == self.sender.as_str() || self.namespaces.matches(Kind::Users, user_id)
    }
}

/// The raw file. Unknown fields are allowed: bridges write their own (`io.element.msc4190`, …).
#[derive(Deserialize)]
struct RawRegistration {
    id: Option<Value>,
    url: Option<Value>,
    as_token: Option<Value>,
    hs_token: Option<Value>,
    sender_localpart: Option<Value>,
    namespaces: Option<Value>,
    rate_limited: Option<Value>,
    protocols: Option<Value>,
    receive_ephemeral: Option<Value>,
    #[serde(rename = "de.sorunome.msc2409.push_ephemeral")]
    push_ephemeral_msc2409: Option<Value>,
    push_ephemeral: Option<Value>,
    #[serde(rename = "org.matrix.msc3202")]
    msc3202: Option<Value>,
}

/// A refusal: the file, the field and what is wrong with it.
fn refuse(file: &Path, field: &str, what: impl std::fmt::Display) -> String {
    format!("appservice registration {}: field `{field}`: {what}", file.display())
}

fn string(file: &Path, field: &str, v: Option<Value>) -> Result<String, String> {
    match v {
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        Some(Value::String(_)) => Err(refuse(file, field, "must not be empty")),
        None | Some(Value::Null) => Err(refuse(file, field, "is required")),
        Some(other) => Err(refuse(file, field, format!("must be a string, found {other}"))),
    }
}

fn boolean(file: &Path, field: &str, v: Option<Value>, default: bool) -> Result<bool, String> {
    match v {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(b),
        Some(other) => Err(refuse(file, field, format!("must be true or false, found {other}"))),
    }
}

fn namespace_list(file: &Path, field: &str, v: Option<&Value>) -> Result<Vec<Namespace>, String> {
    let items = match v {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(other) => return Err(refuse(file, field, format!("must be a list, found {other}"))),
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let at = format!("{field}[{i}]");
        let Some(obj) = item.as_object() else {
            return Err(refuse(file, &at, "must be a mapping with `exclusive` and `regex`"));
        };
        let exclusive = match obj.get("exclusive") {
            Some(Value::Bool(b)) => *b,
            None => return Err(refuse(file, &format!("{at}.exclusive"), "is required")),
            Some(other) => {
                return Err(refuse(file, &format!("{at}.exclusive"), format!("must be true or false, found {other}")));
            }
        };
        let source = match obj.get("regex") {
            Some(Value::String(s)) => s.clone(),
            None => return Err(refuse(file, &format!("{at}.regex"), "is required")),
            Some(other) => {
                return Err(refuse(file, &format!("{at}.regex"), format!("must be a string, found {other}")));
            }
        };
        let regex = Regex::new(&format!("^(?:{source})"))
            .map_err(|e| refuse(file, &format!("{at}.regex"), format!("invalid regex {source:?}: {e}")))?;
        out.push(Namespace { exclusive, source, regex });
    }
    Ok(out)
}

/// Parses and checks one registration file on its own.
pub fn parse(file: &Path, text: &str, server_name: &str) -> Result<Registration, String> {
    let raw: RawRegistration = serde_norway::from_str(text)
        .map_err(|e| format!("appservice registration {}: not a registration file: {e}", file.display()))?;
    let id = string(file, "id", raw.id)?;
    let url = match raw.url {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => {
            let parsed = url::Url::parse(&s).map_err(|e| refuse(file, "url", format!("invalid URL {s:?}: {e}")))?;
            if !matches!(parsed.scheme(), "http" | "https") {
                return Err(refuse(file, "url", format!("must be an http or https URL, got {s:?}")));
            }
            Some(s.trim_end_matches('/').to_owned())
        }
        Some(other) => return Err(refuse(file, "url", format!("must be a string or null, found {other}"))),
    };
    let as_token = string(file, "as_token", raw.as_token)?;
    let hs_token = string(file, "hs_token", raw.hs_token)?;
    let localpart = string(file, "sender_localpart", raw.sender_localpart)?;
    let sender = ruma::UserId::parse(format!("@{localpart}:{server_name}"))
        .map_err(|e| refuse(file, "sender_localpart", format!("{localpart:?} does not make a valid user id: {e}")))?;
    let namespaces = match raw.namespaces {
        None | Some(Value::Null) => return Err(refuse(file, "namespaces", "is required")),
        Some(Value::Object(ns)) => Namespaces {
            users: namespace_list(file, "namespaces.users", ns.get("users"))?,
            aliases: namespace_list(file, "namespaces.aliases", ns.get("aliases"))?,
            rooms: namespace_list(file, "namespaces.rooms", ns.get("rooms"))?,
        },
        Some(other) => return Err(refuse(file, "namespaces", format!("must be a mapping, found {other}"))),
    };
    let protocols = match raw.protocols {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .into_iter()
            .enumerate()
            .map(|(i, p)| match p {
                Value::String(s) if !s.is_empty() => Ok(s),
                other => {
                    Err(refuse(file, &format!("protocols[{i}]"), format!("must be a non-empty string, found {other}")))
                }
            })
            .collect::<Result<_, _>>()?,
        Some(other) => return Err(refuse(file, "protocols", format!("must be a list, found {other}"))),
    };
    let receive_ephemeral = boolean(file, "receive_ephemeral", raw.receive_ephemeral, false)?
        | boolean(file, "de.sorunome.msc2409.push_ephemeral", raw.push_ephemeral_msc2409, false)?
        | boolean(file, "push_ephemeral", raw.push_ephemeral, false)?;
    Ok(Registration {
        file: file.to_owned(),
        id,
        url,
        as_token,
        hs_token,
        sender,
        namespaces,
        rate_limited: boolean(file, "rate_limited", raw.rate_limited, true)?,
        protocols,
        receive_ephemeral,
        msc3202: boolean(file, "org.matrix.msc3202", raw.msc3202, false)?,
    })
}

/// Reads, parses and cross-checks every file: ids and `as_token`s are unique, and no exclusive
/// namespace of one appservice overlaps a namespace of another.
pub fn load(files: &[PathBuf], server_name: &str) -> Result<Vec<Registration>, String> {
    let mut regs: Vec<Registration> = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(file)
            .map_err(|e| format!("appservice registration {}: cannot be read: {e}", file.display()))?;
        let reg = parse(file, &text, server_name)?;
        for other in &regs {
            if other.id == reg.id {
                return Err(refuse(file, "id", format!("{:?} is also the id of {}", reg.id, other.file.display())));
            }
            if other.as_token == reg.as_token {
                return Err(refuse(file, "as_token", format!("is also the as_token of {}", other.file.display())));
            }
            if other.sender == reg.sender {
                return Err(refuse(
                    file,
                    "sender_localpart",
                    format!("{} is also the sender of {}", reg.sender, other.file.display()),
                ));
            }
            for (kind, field) in [(Kind::Users, "users"), (Kind::Aliases, "aliases"), (Kind::Rooms, "rooms")] {
                for (i, mine) in reg.namespaces.list(kind).iter().enumerate() {
                    for theirs in other.namespaces.list(kind) {
                        if (mine.exclusive || theirs.exclusive) && overlap(mine, theirs) {
                            return Err(refuse(
                                file,
                                &format!("namespaces.{field}[{i}].regex"),
                                format!(
                                    "{:?} overlaps the {}namespace {:?} of {}",
                                    mine.source,
                                    if theirs.exclusive { "exclusive " } else { "" },
                                    theirs.source,
                                    other.file.display()
                                ),
                            ));
                        }
                    }
                }
            }
        }
        regs.push(reg);
    }
    Ok(regs)
}

/// Whether two namespaces share a name. Regex intersection is not something the regex crate
/// answers, so this asks it of sample names: the shortest strings each regex matches (every
/// repetition at its minimum and once more, each alternative, each class's first character)
/// are tried against the other. That catches equal namespaces and one nested in another (the
/// mistakes made in practice: two bridges given `@telegram_.*`), not every contrived overlap.
fn overlap(a: &Namespace, b: &Namespace) -> bool {
    a.source == b.source
        || samples(&a.source).iter().any(|s| b.is_match(s))
        || samples(&b.source).iter().any(|s| a.is_match(s))
}

const MAX_SAMPLES: usize = 64;

fn samples(source: &str) -> Vec<String> {
    match regex_syntax::parse(source) {
        Ok(hir) => hir_samples(&hir),
        Err(_) => Vec::new(),
    }
}

fn hir_samples(hir: &regex_syntax::hir::Hir) -> Vec<String> {
    use regex_syntax::hir::{Class, HirKind};
    match hir.kind() {
        HirKind::Empty | HirKind::Look(_) => vec![String::new()],
        HirKind::Literal(lit) => vec![String::from_utf8_lossy(&lit.0).into_owned()],
        HirKind::Class(Class::Unicode(c)) => {
            c.ranges().first().map(|r| vec![r.start().to_string()]).unwrap_or_default()
        }
        HirKind::Class(Class::Bytes(c)) => {
            c.ranges().first().map(|r| vec![(r.start() as char).to_string()]).unwrap_or_default()
        }
        HirKind::Capture(c) => hir_samples(&c.sub),
        HirKind::Repetition(rep) => {
            let inner = hir_samples(&rep.sub);
            let mut out = Vec::new();
            for count in [rep.min, rep.min + 1] {
                if rep.max.is_some_and(|max| count > max) {
                    continue;
                }
                for s in &inner {
                    out.push(s.repeat(count as usize));
                }
            }
            out.truncate(MAX_SAMPLES);
            out
        }
        HirKind::Concat(parts) => {
            let mut acc = vec![String::new()];
            for part in parts {
                let next = hir_samples(part);
                let mut joined = Vec::new();
                for a in &acc {
                    for n in &next {
                        if joined.len() < MAX_SAMPLES {
                            joined.push(format!("{a}{n}"));
                        }
                    }
                }
                acc = joined;
            }
            acc
        }
        HirKind::Alternation(alts) => {
            let mut out: Vec<String> = alts.iter().flat_map(hir_samples).collect();
            out.truncate(MAX_SAMPLES);
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(regex: &str) -> Namespace {
        Namespace { exclusive: true, source: regex.into(), regex: Regex::new(&format!("^(?:{regex})")).unwrap() }
    }

    #[test]
    fn nested_and_equal_namespaces_overlap_disjoint_ones_do_not() {
        assert!(overlap(&ns("@telegram_.*:example\\.org"), &ns("@telegram_.*:example\\.org")));
        assert!(overlap(&ns("@telegram_.*"), &ns("@telegram_bot_[0-9]+:example\\.org")));
        assert!(overlap(&ns("@(irc|tg)_.*"), &ns("@tg_.*")));
        assert!(!overlap(&ns("@telegram_.*"), &ns("@discord_.*")));
        assert!(!overlap(&ns("^@signal_.*:example\\.org$"), &ns("^@whatsapp_.*:example\\.org$")));
    }
}
