/// One finding of a readiness check (before serving, or `rustlayer check`): what was
/// checked, whether it passed, and what was found or what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}

impl Check {
    /// A passing check reports what it found; a failing one, its error.
    pub fn new<E: std::fmt::Display>(name: &'static str, outcome: Result<String, E>) -> Check {
        let (ok, detail) = match outcome {
            Ok(detail) => (true, detail),
            Err(err) => (false, err.to_string()),
        };
        Check { name, ok, detail }
    }
}
