//! Hash banks and matching.
//!
//! A bank is loaded whole or not at all: a bad line is reported as `file:line` and the bank is
//! refused. Matching is an exact scan by Hamming distance; every match carries the bank's
//! version and the item id so a receiver can tell which list and entry fired.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::{BankFormat, BankSpec};
use crate::decide::{Action, Severity};
use crate::hash::Hash256;

#[derive(Debug, Clone)]
pub struct BankEntry {
    pub hash: Hash256,
    /// The item id from the second column, or `line:N` when the file gives none.
    pub item: Arc<str>,
    /// Optional free text from the third column.
    pub label: Option<Arc<str>>,
}

#[derive(Debug)]
pub struct Bank {
    pub name: Arc<str>,
    pub path: PathBuf,
    /// Changes whenever the bank's content changes.
    pub version: String,
    pub distance: u32,
    pub severity: Severity,
    pub action: Action,
    /// Whether evidence (thumbnails) of this bank's matches may be kept.
    pub store_evidence: bool,
    entries: Vec<BankEntry>,
    limbs: Vec<[u64; 4]>,
}

#[derive(Debug, thiserror::Error)]
pub enum BankError {
    #[error("{}: cannot read bank: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}:{line}: {message}", path.display())]
    Line {
        path: PathBuf,
        line: usize,
        message: String,
    },
}

/// A frame hash within a bank's threshold of one of its entries.
#[derive(Debug, Clone)]
pub struct Match {
    pub bank: Arc<str>,
    pub bank_version: String,
    pub threshold: u32,
    pub entry: BankEntry,
    pub distance: u32,
    pub severity: Severity,
    pub action: Action,
    pub store_evidence: bool,
}

impl Bank {
    pub fn load(spec: &BankSpec) -> Result<Bank, BankError> {
        Self::load_with(spec, None)
    }

    /// Loads a bank file, plus the items added to it through the API (`extra`, a PDQ file in
    /// the state directory) when there is one.
    pub fn load_with(spec: &BankSpec, extra: Option<&Path>) -> Result<Bank, BankError> {
        let mut text = std::fs::read_to_string(&spec.path).map_err(|source| BankError::Io {
            path: spec.path.clone(),
            source,
        })?;
        let mut entries = match spec.format {
            BankFormat::Pdq => parse_pdq_lines(&text, &spec.path)?,
        };
        if let Some(extra) = extra.filter(|p| p.exists()) {
            let added = std::fs::read_to_string(extra).map_err(|source| BankError::Io {
                path: extra.to_path_buf(),
                source,
            })?;
            entries.extend(parse_pdq_lines(&added, extra)?);
            text.push_str(&added);
        }
        let mut bank = Bank::from_entries(
            &spec.name,
            spec.path.clone(),
            spec.distance,
            entries,
            &text,
        );
        bank.severity = spec.severity;
        bank.action = spec.action;
        bank.store_evidence = spec.store_evidence;
        Ok(bank)
    }

    pub fn from_entries(
        name: &str,
        path: PathBuf,
        distance: u32,
        entries: Vec<BankEntry>,
        content: &str,
    ) -> Bank {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        content.hash(&mut h);
        let version = format!("{}-{:016x}", entries.len(), h.finish());
        let limbs = entries.iter().map(|e| e.hash.limbs()).collect();
        Bank {
            name: name.into(),
            path,
            version,
            distance,
            severity: Severity::Critical,
            action: Action::Suspend,
            store_evidence: false,
            entries,
            limbs,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The closest entry within the bank's threshold, if any.
    pub fn best_match(&self, hash: &Hash256) -> Option<Match> {
        let q = hash.limbs();
        let mut best: Option<(usize, u32)> = None;
        for (i, e) in self.limbs.iter().enumerate() {
            let d = (e[0] ^ q[0]).count_ones()
                + (e[1] ^ q[1]).count_ones()
                + (e[2] ^ q[2]).count_ones()
                + (e[3] ^ q[3]).count_ones();
            if d <= self.distance && best.is_none_or(|(_, bd)| d < bd) {
                best = Some((i, d));
            }
        }
        best.map(|(i, distance)| Match {
            bank: self.name.clone(),
            bank_version: self.version.clone(),
            threshold: self.distance,
            entry: self.entries[i].clone(),
            distance,
            severity: self.severity,
            action: self.action,
            store_evidence: self.store_evidence,
        })
    }
}

/// Where the items added to a bank through the API are kept.
pub fn added_items_path(state_dir: &Path, bank: &str) -> PathBuf {
    state_dir.join("bank-items").join(format!("{bank}.pdq"))
}

/// Loads every configured bank with its API-added items, and exports their sizes.
pub fn load_banks(config: &crate::config::Config) -> Result<Banks, BankError> {
    let banks = Banks {
        banks: config
            .banks
            .iter()
            .map(|spec| Bank::load_with(spec, Some(&added_items_path(&config.state_dir, &spec.name))))
            .collect::<Result<_, _>>()?,
    };
    for b in &banks.banks {
        crate::metrics::metrics()
            .bank_hashes
            .with_label_values(&[&b.name])
            .set(b.len() as i64);
        if b.is_empty() {
            tracing::warn!(bank = %b.name, "bank is empty");
        }
    }
    tracing::info!(banks = %banks, "banks loaded");
    Ok(banks)
}

/// Appends items (PDQ lines, validated first: all or nothing) to a bank's API-added file,
/// synced to disk. The caller reloads the bank.
pub fn append_items(state_dir: &Path, bank: &str, lines: &str) -> Result<usize, BankError> {
    let path = added_items_path(state_dir, bank);
    let n = parse_pdq_lines(lines, Path::new("request"))?.len();
    let io = |source| BankError::Io {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(path.parent().expect("has a parent")).map_err(io)?;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(io)?;
    use std::io::Write as _;
    let mut text = lines.trim_end().to_string();
    text.push('\n');
    f.write_all(text.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    Ok(n)
}

/// Parses the plain PDQ format: `hex[,item_id[,label]]` per line, `#` starts a comment.
pub fn parse_pdq_lines(text: &str, path: &Path) -> Result<Vec<BankEntry>, BankError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line_no = i + 1;
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let mut cols = line.splitn(3, ',').map(str::trim);
        let hex = cols.next().unwrap_or("");
        let hash: Hash256 = hex
            .to_ascii_lowercase()
            .parse()
            .map_err(|e| BankError::Line {
                path: path.to_path_buf(),
                line: line_no,
                message: format!("{e}"),
            })?;
        let item: Arc<str> = match cols.next().filter(|s| !s.is_empty()) {
            Some(id) => id.into(),
            None => format!("line:{line_no}").into(),
        };
        let label = cols.next().filter(|s| !s.is_empty()).map(Arc::from);
        out.push(BankEntry { hash, item, label });
    }
    Ok(out)
}

/// All loaded banks.
#[derive(Debug, Default)]
pub struct Banks {
    pub banks: Vec<Bank>,
}

impl Banks {
    pub fn load(specs: &[BankSpec]) -> Result<Banks, BankError> {
        Ok(Banks {
            banks: specs.iter().map(Bank::load).collect::<Result<_, _>>()?,
        })
    }

    /// The best match in each bank.
    pub fn matches(&self, hash: &Hash256) -> Vec<Match> {
        self.banks
            .iter()
            .filter_map(|b| b.best_match(hash))
            .collect()
    }
}

impl fmt::Display for Banks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .banks
            .iter()
            .map(|b| format!("{} ({} hashes)", b.name, b.len()))
            .collect();
        f.write_str(&parts.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "f8f8f0cee0f4a84f06370a22038f63f0b36e2ed596621e1d33e6b39c4e9c9b22";

    #[test]
    fn parses_hashes_ids_labels_and_comments() {
        let text = format!(
            "# known items\n\n{A},item-7,attack clip\n{} # trailing\n",
            A.to_uppercase()
        );
        let e = parse_pdq_lines(&text, Path::new("b.pdq")).unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!(&*e[0].item, "item-7");
        assert_eq!(e[0].label.as_deref(), Some("attack clip"));
        assert_eq!(&*e[1].item, "line:4");
        assert_eq!(e[1].hash.to_string(), A);
    }

    #[test]
    fn a_bad_line_names_file_and_line() {
        let text = format!("{A}\nnot-a-hash\n");
        let err = parse_pdq_lines(&text, Path::new("banks/k.pdq")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "banks/k.pdq:2: a PDQ hash has 64 hex digits, this has 10"
        );
    }

    #[test]
    fn best_match_respects_the_threshold() {
        let base: Hash256 = A.parse().unwrap();
        let mut near = base;
        for k in 0..10 {
            near.words[k] ^= 1;
        }
        let mut far = base;
        for w in far.words.iter_mut() {
            *w = !*w;
        }
        let entries = vec![
            BankEntry {
                hash: far,
                item: "far".into(),
                label: None,
            },
            BankEntry {
                hash: near,
                item: "near".into(),
                label: None,
            },
        ];
        let bank = Bank::from_entries("b", PathBuf::from("b"), 31, entries, "x");
        let m = bank.best_match(&base).unwrap();
        assert_eq!((&*m.entry.item, m.distance), ("near", 10));
        let strict = Bank::from_entries("b", PathBuf::from("b"), 9, bank.entries.clone(), "x");
        assert!(strict.best_match(&base).is_none());
    }
}
