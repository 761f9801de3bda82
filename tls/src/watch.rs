//! A value built from files, rebuilt when their contents change.
//!
//! The files are read again at most once per interval, when the value is
//! asked for (at a TLS handshake): certificates rotated on disk (by
//! cert-manager, a renewal job, or by hand) are in use within seconds, with
//! no restart and no background task. When the new contents do not build
//! (a key that does not match its certificate, a half-written file), the
//! previous value stays in use and the reason is logged once per distinct
//! set of contents; it is tried again when the files change again.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::TlsError;

/// How often files are looked at again (at most).
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(2);

type Build<T> = dyn Fn(&[Vec<u8>]) -> Result<T, TlsError> + Send + Sync;

struct State<T> {
    current: Arc<T>,
    /// The contents `current` was built from.
    contents: Vec<Vec<u8>>,
    /// Contents that failed to build (not tried again until they change).
    refused: Option<Vec<Vec<u8>>>,
    checked: Instant,
}

/// A value built from the contents of `paths`, kept current.
pub struct Watched<T> {
    label: String,
    /// Each file and what it is (for messages).
    paths: Vec<(PathBuf, &'static str)>,
    interval: Duration,
    build: Box<Build<T>>,
    state: Mutex<State<T>>,
}

impl<T> Watched<T> {
    /// Reads `paths` and builds the first value. `label` names the value in
    /// log lines.
    ///
    /// # Errors
    ///
    /// The first read or build error: a server must not start without a
    /// usable configuration.
    pub fn new(
        label: impl Into<String>,
        paths: Vec<(PathBuf, &'static str)>,
        interval: Duration,
        build: impl Fn(&[Vec<u8>]) -> Result<T, TlsError> + Send + Sync + 'static,
    ) -> Result<Self, TlsError> {
        let contents = read_all(&paths)?;
        let current = Arc::new(build(&contents)?);
        Ok(Self {
            label: label.into(),
            paths,
            interval,
            build: Box::new(build),
            state: Mutex::new(State { current, contents, refused: None, checked: Instant::now() }),
        })
    }

    /// The current value, after looking at the files again if the interval
    /// has passed.
    pub fn current(&self) -> Arc<T> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.checked.elapsed() >= self.interval {
            self.refresh(&mut state);
        }
        Arc::clone(&state.current)
    }

    /// Looks at the files now; true when a new value was built.
    pub fn check_now(&self) -> bool {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        self.refresh(&mut state)
    }

    fn refresh(&self, state: &mut State<T>) -> bool {
        state.checked = Instant::now();
        let contents = match read_all(&self.paths) {
            Ok(c) => c,
            Err(e) => {
                // A file being replaced may be missing for a moment.
                log::warn!("{}: {e}; still using the previous configuration", self.label);
                return false;
            }
        };
        if contents == state.contents || state.refused.as_ref() == Some(&contents) {
            return false;
        }
        match (self.build)(&contents) {
            Ok(value) => {
                log::info!("{}: reloaded from {}", self.label, self.files());
                state.current = Arc::new(value);
                state.contents = contents;
                state.refused = None;
                true
            }
            Err(e) => {
                log::warn!("{}: the changed files are refused ({e}); still using the previous configuration", self.label);
                state.refused = Some(contents);
                false
            }
        }
    }

    fn files(&self) -> String {
        crate::list(&self.paths.iter().map(|(p, _)| p.as_path()).collect::<Vec<_>>())
    }
}

fn read_all(paths: &[(PathBuf, &'static str)]) -> Result<Vec<Vec<u8>>, TlsError> {
    paths.iter().map(|(p, what)| crate::pem::read(p, what)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_file_is_picked_up_and_a_bad_one_is_not() {
        let dir = std::env::temp_dir().join(format!("sightline-tls-watch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("n");
        std::fs::write(&path, "1").expect("write");
        let parse = |c: &[Vec<u8>]| {
            String::from_utf8_lossy(&c[0]).trim().parse::<u32>().map_err(|_| TlsError::NoRoots)
        };
        let w = Watched::new("test", vec![(path.clone(), "file")], Duration::from_secs(3600), parse).expect("first");
        assert_eq!(*w.current(), 1);
        std::fs::write(&path, "2").expect("write");
        // Not looked at before the interval …
        assert_eq!(*w.current(), 1);
        // … and picked up when it is.
        assert!(w.check_now());
        assert_eq!(*w.current(), 2);
        std::fs::write(&path, "garbage").expect("write");
        assert!(!w.check_now());
        assert_eq!(*w.current(), 2, "a bad file keeps the previous value");
        std::fs::remove_file(&path).expect("remove");
        assert!(!w.check_now());
        assert_eq!(*w.current(), 2, "a missing file keeps the previous value");
        std::fs::write(&path, "3").expect("write");
        assert!(w.check_now());
        assert_eq!(*w.current(), 3);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_bad_first_file_is_an_error() {
        let missing = PathBuf::from("/nonexistent/sightline/cert.pem");
        let e = Watched::new("test", vec![(missing, "certificate file")], DEFAULT_INTERVAL, |_| Ok(())).err().expect("refused");
        assert!(e.to_string().starts_with("reading the certificate file /nonexistent/sightline/cert.pem"), "{e}");
    }
}
