//! What a root tried that gave it no node (addresses and scans, and why), for the error
//! that says so when no node was ever found.

/// What a root tried that gave it no node: the last [`Tried::KEEP`] attempts.
#[derive(Debug, Default)]
pub(crate) struct Tried {
    last: std::collections::VecDeque<String>,
    more: u64,
}

impl Tried {
    const KEEP: usize = 8;

    pub(crate) fn add(&mut self, what: String) {
        if self.last.len() == Self::KEEP {
            self.last.pop_front();
            self.more += 1;
        }
        self.last.push_back(what);
    }
}

impl std::fmt::Display for Tried {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.last.is_empty() {
            return f.write_str("none was added (add_node or search_nodes first)");
        }
        f.write_str("tried ")?;
        if self.more > 0 {
            write!(f, "{} more, then ", self.more)?;
        }
        let last: Vec<&str> = self.last.iter().map(String::as_str).collect();
        f.write_str(&last.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_attempts_are_named_and_the_earlier_counted() {
        let mut t = Tried::default();
        assert_eq!(
            t.to_string(),
            "none was added (add_node or search_nodes first)"
        );
        for i in 0..10 {
            t.add(format!("a{i}"));
        }
        assert_eq!(
            t.to_string(),
            "tried 2 more, then a2; a3; a4; a5; a6; a7; a8; a9"
        );
    }
}
