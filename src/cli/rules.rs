//! `.kmsecrets.yaml`: creation rules at a repository's root, the way
//! `.sops.yaml` works for SOPS users. Each rule maps a path pattern to the
//! keys every file under it is wrapped with (several copies), the widest
//! scope allowed, the encryption context it must carry and the Secret types
//! allowed:
//!
//! ```yaml
//! rules:
//!   - path: secrets/prod/**
//!     keys:
//!       - arn:aws:kms:eu-west-1:111122223333:key/1234abcd-…
//!       - arn:aws:kms:eu-central-1:111122223333:key/5678efgh-…
//!     scope: strict
//!     context: {team: payments}
//!     allowedTypes: [Opaque, kubernetes.io/tls]
//!   - path: "**"
//!     keys: [file:dev/local.key]
//! ```
//!
//! The first rule whose pattern matches the file's path (relative to the
//! directory holding `.kmsecrets.yaml`, `/`-separated; `*` stays within one
//! directory, `**` crosses them) wins. The file is found by walking up from
//! the file's directory, stopping at the repository root (a directory with
//! `.git`).
//!
//! Read by `encrypt` (keys, scope and context when no flag gives them; a
//! flag that contradicts the rule is an error naming both), `rotate
//! --rewrap` with no `--key` (moves every file to its rule's keys) and
//! `guard` (a resource that breaks its rule is a finding).
//!
//! Keys are named by what files hold — a key ARN, `pub:PATH` (a SealingKey
//! file: its key ARN) or `file:PATH` (a local key file, relative to this
//! file's directory) — never by an alias: `guard` checks files offline
//! against the ARNs, and an alias can be re-pointed by anyone allowed
//! `kms:UpdateAlias`. The rule file decides where data keys are wrapped, so
//! it deserves the protection of code (CODEOWNERS, review): see
//! docs/review.md.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use globset::{GlobBuilder, GlobMatcher};
use serde::Deserialize;

use super::keys::{KeyArg, parse_key_arg};
use super::{CliResult, msg};
use crate::api::{EncryptedSecret, Scope};

pub const FILE_NAME: &str = ".kmsecrets.yaml";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesFile {
    rules: Vec<RuleSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RuleSpec {
    path: String,
    keys: Vec<String>,
    #[serde(default)]
    scope: Option<Scope>,
    #[serde(default)]
    context: BTreeMap<String, String>,
    #[serde(default)]
    allowed_types: Vec<String>,
}

/// One key of a rule, as written and as a `--key` argument (file paths
/// made relative to the rules file's directory).
pub struct RuleKey {
    pub text: String,
    pub arg: KeyArg,
}

impl RuleKey {
    /// The `keyId` a copy under this key carries (reads `pub:`/`file:` files).
    pub fn key_id(&self) -> CliResult<String> {
        match &self.arg {
            KeyArg::Kms(arn) => Ok(arn.clone()),
            KeyArg::Sealing(p) => Ok(crate::kms::sealing::SealingKey::load(p)
                .map_err(|e| msg(e.to_string()))?
                .key_id()
                .to_string()),
            KeyArg::Local(p) => Ok(crate::kms::local::LocalKey::load(p)?.id().to_string()),
        }
    }
}

pub struct Rule {
    /// 1-based, for messages: "rule 2 (secrets/prod/**)".
    pub index: usize,
    pub pattern: String,
    matcher: GlobMatcher,
    pub keys: Vec<RuleKey>,
    /// The widest scope allowed; also encrypt's default.
    pub scope: Scope,
    /// Pairs every resource must carry.
    pub context: BTreeMap<String, String>,
    /// Empty: any type.
    pub allowed_types: Vec<String>,
    /// The rules file, for messages.
    pub file: PathBuf,
}

impl Rule {
    /// "rule 2 (secrets/prod/**) of ./.kmsecrets.yaml"
    pub fn describe(&self) -> String {
        format!(
            "rule {} ({}) of {}",
            self.index,
            self.pattern,
            self.file.display()
        )
    }

    /// Every way `es` breaks this rule (empty: it follows it). Offline:
    /// reads only the rule's key files.
    pub fn violations(&self, es: &EncryptedSecret) -> Vec<String> {
        let mut out = Vec::new();
        let mut want = BTreeSet::new();
        for k in &self.keys {
            match k.key_id() {
                Ok(id) => {
                    want.insert(id);
                }
                Err(e) => out.push(format!("cannot check key {}: {e}", k.text)),
            }
        }
        let have: BTreeSet<String> = es.spec.data_keys.iter().map(|d| d.key_id.clone()).collect();
        for k in have.difference(&want) {
            out.push(format!(
                "wrapping key {k} is not one of the keys of {}",
                self.describe()
            ));
        }
        if out.is_empty() {
            for k in want.difference(&have) {
                out.push(format!(
                    "no copy under {k}, which {} requires",
                    self.describe()
                ));
            }
        }
        if scope_rank(es.spec.scope) > scope_rank(self.scope) {
            out.push(format!(
                "scope {} is wider than {} allows ({})",
                es.spec.scope.as_str(),
                self.describe(),
                self.scope.as_str()
            ));
        }
        for (k, v) in &self.context {
            match es.spec.encryption_context.get(k) {
                None => out.push(format!(
                    "context {k} is missing ({} requires {k}={v})",
                    self.describe()
                )),
                Some(w) if w != v => out.push(format!(
                    "context {k}={w}, {} requires {k}={v}",
                    self.describe()
                )),
                _ => {}
            }
        }
        let ty = es
            .spec
            .template
            .as_ref()
            .and_then(|t| t.type_.as_deref())
            .unwrap_or("Opaque");
        if !self.type_allowed(ty) {
            out.push(format!(
                "type {ty} is not allowed by {} ({})",
                self.describe(),
                self.allowed_types.join(", ")
            ));
        }
        out
    }

    /// The keys as written: "K1, K2".
    pub fn key_list(&self) -> String {
        self.keys
            .iter()
            .map(|k| k.text.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    pub fn type_allowed(&self, ty: &str) -> bool {
        self.allowed_types.is_empty() || self.allowed_types.iter().any(|t| t == ty)
    }
}

pub fn scope_rank(s: Scope) -> u8 {
    match s {
        Scope::Strict => 0,
        Scope::Namespace => 1,
        Scope::Cluster => 2,
    }
}

/// One parsed `.kmsecrets.yaml`.
pub struct Rules {
    /// The directory patterns are relative to (canonical).
    dir: PathBuf,
    pub file: PathBuf,
    pub rules: Vec<Rule>,
}

impl Rules {
    pub fn load(file: &Path) -> CliResult<Rules> {
        let name = file.display();
        let text =
            std::fs::read_to_string(file).map_err(|e| msg(format!("cannot read {name}: {e}")))?;
        let parsed: RulesFile = serde_saphyr::from_str(&text).map_err(|e| {
            msg(format!(
                "{name}: not a rules file ({}); expected `rules:` with path, keys, scope, context, allowedTypes",
                super::first_line(&e.to_string())
            ))
        })?;
        let dir = file
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let dir = std::fs::canonicalize(&dir).unwrap_or(dir);
        let mut rules = Vec::new();
        for (i, r) in parsed.rules.into_iter().enumerate() {
            let at = format!("{name}: rule {} ({})", i + 1, r.path);
            let matcher = GlobBuilder::new(r.path.trim_start_matches("./"))
                .literal_separator(true)
                .build()
                .map_err(|e| msg(format!("{at}: bad path pattern: {e}")))?
                .compile_matcher();
            if r.keys.is_empty() {
                return Err(msg(format!("{at}: no keys")));
            }
            let mut keys = Vec::new();
            for k in &r.keys {
                let arg = parse_key_arg(k).map_err(|e| msg(format!("{at}: {e}")))?;
                let arg = match arg {
                    KeyArg::Kms(id) if is_key_arn(&id) => KeyArg::Kms(id),
                    KeyArg::Kms(id) => {
                        return Err(msg(format!(
                            "{at}: key {id}: name a key ARN (arn:aws:kms:REGION:ACCOUNT:key/ID), not an alias or a bare id: guard checks files against it offline, and an alias can be re-pointed by anyone allowed kms:UpdateAlias"
                        )));
                    }
                    KeyArg::Local(p) => KeyArg::Local(dir.join(p)),
                    KeyArg::Sealing(p) => KeyArg::Sealing(dir.join(p)),
                };
                keys.push(RuleKey {
                    text: k.clone(),
                    arg,
                });
            }
            for k in r.context.keys() {
                if crate::api::is_reserved_key(k) {
                    return Err(msg(format!(
                        "{at}: context {k}: keys under kmsecrets.dev/ are reserved"
                    )));
                }
            }
            rules.push(Rule {
                index: i + 1,
                pattern: r.path,
                matcher,
                keys,
                scope: r.scope.unwrap_or_default(),
                context: r.context,
                allowed_types: r.allowed_types,
                file: file.to_path_buf(),
            });
        }
        Ok(Rules {
            dir,
            file: file.to_path_buf(),
            rules,
        })
    }

    /// The first rule matching `path` (absolute, or relative to the current
    /// directory), or `None`.
    pub fn rule_for(&self, path: &Path) -> Option<&Rule> {
        let abs = absolute(path);
        let rel = abs.strip_prefix(&self.dir).ok()?;
        let rel: String = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy())
            .collect::<Vec<_>>()
            .join("/");
        self.rules.iter().find(|r| r.matcher.is_match(&rel))
    }
}

fn is_key_arn(s: &str) -> bool {
    s.starts_with("arn:") && s.split(':').nth(2) == Some("kms") && s.contains(":key/")
}

/// `path` made absolute with its directory canonical (the file itself may
/// not exist yet).
fn absolute(path: &Path) -> PathBuf {
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(path))
            .unwrap_or_else(|_| path.to_path_buf())
    };
    match (abs.parent(), abs.file_name()) {
        (Some(dir), Some(name)) => std::fs::canonicalize(dir)
            .map(|d| d.join(name))
            .unwrap_or(abs),
        _ => abs,
    }
}

/// Finds and caches rules files (one per repository, for runs over many
/// files).
#[derive(Default)]
pub struct RulesCache {
    by_dir: HashMap<PathBuf, Option<Arc<Rules>>>,
}

impl RulesCache {
    /// The rules governing `path`: the nearest `.kmsecrets.yaml` in its
    /// directory or above, not above the repository root.
    pub fn rules_for(&mut self, path: &Path) -> CliResult<Option<Arc<Rules>>> {
        let abs = absolute(path);
        let mut dir = abs.parent().map(Path::to_path_buf);
        let mut visited = Vec::new();
        let mut found = None;
        while let Some(d) = dir {
            if let Some(hit) = self.by_dir.get(&d) {
                found = hit.clone();
                break;
            }
            visited.push(d.clone());
            let candidate = d.join(FILE_NAME);
            if candidate.is_file() {
                found = Some(Arc::new(Rules::load(&candidate)?));
                break;
            }
            if d.join(".git").exists() {
                break;
            }
            dir = d.parent().map(Path::to_path_buf);
        }
        for d in visited {
            self.by_dir.insert(d, found.clone());
        }
        Ok(found)
    }
}

/// What a rule lookup found for one path.
pub enum Lookup {
    /// No `.kmsecrets.yaml` governs the path.
    NoRules,
    /// A rules file exists but no rule matches.
    Unmatched(Arc<Rules>),
    Matched(Arc<Rules>, usize),
}

impl Lookup {
    pub fn find(cache: &mut RulesCache, path: &Path) -> CliResult<Lookup> {
        let Some(rules) = cache.rules_for(path)? else {
            return Ok(Lookup::NoRules);
        };
        match rules.rule_for(path) {
            Some(r) => {
                let i = r.index - 1;
                Ok(Lookup::Matched(rules, i))
            }
            None => Ok(Lookup::Unmatched(rules)),
        }
    }

    pub fn rule(&self) -> Option<&Rule> {
        match self {
            Lookup::Matched(rules, i) => Some(&rules.rules[*i]),
            _ => None,
        }
    }
}

/// "PATH matches no rule of FILE" for commands that need one.
pub fn unmatched(path: &Path, rules: &Rules) -> String {
    format!(
        "{} matches no rule of {} (patterns: {}); add a rule for it, or name the keys with --key",
        path.display(),
        rules.file.display(),
        rules
            .rules
            .iter()
            .map(|r| r.pattern.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, rel: &str, text: &str) -> PathBuf {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        p
    }

    const A: &str = "arn:aws:kms:eu-west-1:111122223333:key/aaaa";
    const B: &str = "arn:aws:kms:eu-west-1:111122223333:key/bbbb";

    #[test]
    fn first_matching_rule_wins_and_star_stays_in_one_directory() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join(".git")).unwrap();
        write(
            d.path(),
            FILE_NAME,
            &format!(
                "rules:\n  - path: secrets/prod/**\n    keys: [{A}]\n  - path: secrets/*.yaml\n    keys: [{B}]\n    scope: namespace\n"
            ),
        );
        let mut cache = RulesCache::default();
        let prod = write(d.path(), "secrets/prod/db/x.yaml", "");
        let top = write(d.path(), "secrets/y.yaml", "");
        let deep = write(d.path(), "secrets/dev/z.yaml", "");
        let l = Lookup::find(&mut cache, &prod).unwrap();
        assert_eq!(l.rule().unwrap().index, 1);
        let l = Lookup::find(&mut cache, &top).unwrap();
        assert_eq!(l.rule().unwrap().index, 2);
        assert_eq!(l.rule().unwrap().scope, Scope::Namespace);
        assert!(matches!(
            Lookup::find(&mut cache, &deep).unwrap(),
            Lookup::Unmatched(_)
        ));
    }

    #[test]
    fn the_walk_stops_at_the_repository_root() {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            FILE_NAME,
            &format!("rules:\n  - path: '**'\n    keys: [{A}]\n"),
        );
        std::fs::create_dir_all(d.path().join("repo/.git")).unwrap();
        let f = write(d.path(), "repo/a/b.yaml", "");
        let mut cache = RulesCache::default();
        assert!(matches!(
            Lookup::find(&mut cache, &f).unwrap(),
            Lookup::NoRules
        ));
    }

    #[test]
    fn aliases_typos_and_reserved_context_are_refused() {
        let d = tempfile::tempdir().unwrap();
        for (text, want) in [
            (
                "rules:\n  - path: x\n    keys: [alias/prod]\n",
                "not an alias",
            ),
            (
                "rules:\n  - path: x\n    keys: [1234abcd]\n",
                "not an alias",
            ),
            ("rules:\n  - path: x\n    keys: []\n", "no keys"),
            ("rules:\n  - path: x\n    kyes: [a]\n", "not a rules file"),
            (
                &format!(
                    "rules:\n  - path: x\n    keys: [{A}]\n    context: {{kmsecrets.dev/x: y}}\n"
                ),
                "reserved",
            ),
            (
                &format!("rules:\n  - path: 'a[b'\n    keys: [{A}]\n"),
                "bad path pattern",
            ),
        ] {
            let f = write(d.path(), FILE_NAME, text);
            let e = Rules::load(&f).err().expect(text).to_string();
            assert!(e.contains(want), "{text}: {e}");
        }
    }
}
