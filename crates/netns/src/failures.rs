//! The failures of an operation that goes on past each one (undo, teardown, giving a PCI
//! function back), kept together and shown together.

use std::{error::Error as StdError, fmt, ops::Deref};

use crate::error::error_chain;

/// Every failure of one operation that went on past each, in the order they happened; never
/// empty.
///
/// Shown as its one failure when there is one (with that failure's sources as its own, so that
/// a chain reads as if the list were not there), else as the count and then each failure's
/// whole chain: `3 failures: (1) …: …; (2) …; (3) …`. Nothing is dropped from the text.
#[derive(Debug)]
pub struct Failures<E>(Vec<E>);

impl<E> Failures<E> {
    /// `first` and then `more`.
    pub fn new(first: E, more: impl IntoIterator<Item = E>) -> Self {
        let mut all = vec![first];
        all.extend(more);
        Self(all)
    }

    /// The failures collected, or `None` when there were none (the operation succeeded).
    pub fn from_vec(failures: Vec<E>) -> Option<Self> {
        (!failures.is_empty()).then_some(Self(failures))
    }

    /// The first failure.
    pub fn first(&self) -> &E {
        &self.0[0]
    }

    /// The failures, in order.
    pub fn into_vec(self) -> Vec<E> {
        self.0
    }

    /// The same failures, each turned into another type.
    pub fn map<F>(self, f: impl FnMut(E) -> F) -> Failures<F> {
        Failures(self.0.into_iter().map(f).collect())
    }
}

impl<E> Deref for Failures<E> {
    type Target = [E];

    fn deref(&self) -> &[E] {
        &self.0
    }
}

impl<E> IntoIterator for Failures<E> {
    type Item = E;
    type IntoIter = std::vec::IntoIter<E>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a, E> IntoIterator for &'a Failures<E> {
    type Item = &'a E;
    type IntoIter = std::slice::Iter<'a, E>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl<E: StdError + 'static> fmt::Display for Failures<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let [only] = self.0.as_slice() {
            return fmt::Display::fmt(only, f);
        }
        write!(f, "{} failures: ", self.0.len())?;
        for (i, failure) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "({}) {}", i + 1, error_chain(failure))?;
        }
        Ok(())
    }
}

impl<E: StdError + 'static> StdError for Failures<E> {
    /// The one failure's source when there is one failure (its chain goes on); none when
    /// there are several (each chain is in the text already).
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self.0.as_slice() {
            [only] => only.source(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("delete tap0_kata")]
    struct Step(#[source] io::Error);

    fn step(errno: i32) -> Step {
        Step(io::Error::from_raw_os_error(errno))
    }

    #[test]
    fn one_failure_reads_as_that_failure_with_its_sources() {
        let failures = Failures::new(step(libc::EBUSY), []);
        assert_eq!(failures.to_string(), "delete tap0_kata");
        assert_eq!(
            error_chain(&failures),
            format!(
                "delete tap0_kata: {}",
                io::Error::from_raw_os_error(libc::EBUSY)
            )
        );
        assert_eq!(crate::errno_in_chain(&failures), Some(libc::EBUSY));
    }

    #[test]
    fn several_failures_show_the_count_and_every_chain() {
        let failures = Failures::new(step(libc::EBUSY), [step(libc::EPERM)]);
        let busy = io::Error::from_raw_os_error(libc::EBUSY).to_string();
        let perm = io::Error::from_raw_os_error(libc::EPERM).to_string();
        assert_eq!(
            failures.to_string(),
            format!("2 failures: (1) delete tap0_kata: {busy}; (2) delete tap0_kata: {perm}")
        );
        assert!(failures.source().is_none());
        assert_eq!(failures.len(), 2);
    }

    #[test]
    fn no_failures_is_no_list() {
        assert!(Failures::<Step>::from_vec(Vec::new()).is_none());
        let one = Failures::from_vec(vec![step(libc::ENOENT)]).expect("one failure");
        let errnos = one.map(|f| f.0.raw_os_error()).into_vec();
        assert_eq!(errnos, vec![Some(libc::ENOENT)]);
    }
}
