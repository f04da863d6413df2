//! PASS/FAIL bookkeeping.
//!
//! Output format, one line each:
//! - `PASS <subject> <check>`
//! - `FAIL <subject> <check>: <detail>`
//! - `# <free text>` for notes (values, BDFs, offending dmesg lines)
//!
//! where `<subject>` is `<twin> <driver>` (e.g. `edu vfio-pci-rs`), `<twin> parity`,
//! `<twin> mixed`, or `kernel`. The run ends with `debug_locks=<value>` and `N passed, N failed`.

use std::process::ExitCode;

/// Counts checks and prints (or, in tests, collects) their lines.
pub struct Reporter {
    passed: u32,
    failed: u32,
    echo: bool,
    lines: Vec<String>,
    /// Per device type (the first word of the subject: the twin name, or `kernel`) and
    /// column (the second word: a driver, `parity` or `mixed`): (passed, failed).
    tally: std::collections::BTreeMap<(String, String), (u32, u32)>,
}

impl Reporter {
    /// A reporter that prints every line to stdout as it happens.
    pub fn stdout() -> Self {
        Reporter {
            passed: 0,
            failed: 0,
            echo: true,
            lines: Vec::new(),
            tally: Default::default(),
        }
    }

    /// A reporter that only collects lines (for unit tests).
    #[cfg(test)]
    pub fn collect() -> Self {
        Reporter {
            passed: 0,
            failed: 0,
            echo: false,
            lines: Vec::new(),
            tally: Default::default(),
        }
    }

    fn emit(&mut self, line: String) {
        if self.echo {
            println!("{line}");
        }
        self.lines.push(line);
    }

    fn count(&mut self, subject: &str, ok: bool) {
        let mut words = subject.split_whitespace();
        let kind = words.next().unwrap_or("").to_string();
        let column = words.next().unwrap_or("-").to_string();
        let e = self.tally.entry((kind, column)).or_default();
        if ok {
            e.0 += 1;
        } else {
            e.1 += 1;
        }
    }

    /// One line per device type: `<type>: N checks (<column> P/N, ...)`, where a column is a
    /// driver, `parity` or `mixed` and P/N is passed/total.
    pub fn tally_lines(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let mut kinds: Vec<&String> = self.tally.keys().map(|(k, _)| k).collect();
        kinds.dedup();
        for kind in kinds {
            let cols: Vec<(&String, &(u32, u32))> = self
                .tally
                .iter()
                .filter(|((k, _), _)| k == kind)
                .map(|((_, c), v)| (c, v))
                .collect();
            let total: u32 = cols.iter().map(|(_, (p, f))| p + f).sum();
            let parts: Vec<String> = cols
                .iter()
                .map(|(c, (p, f))| format!("{c} {p}/{}", p + f))
                .collect();
            out.push(format!("{kind}: {total} checks ({})", parts.join(", ")));
        }
        out
    }

    pub fn pass(&mut self, subject: &str, check: &str) {
        self.count(subject, true);
        self.passed += 1;
        self.emit(format!("PASS {subject} {check}"));
    }

    pub fn fail(&mut self, subject: &str, check: &str, detail: &str) {
        self.count(subject, false);
        self.failed += 1;
        // Keep one line per check even if a detail (e.g. a tool's stderr) has newlines.
        let detail = detail.replace('\n', " | ");
        self.emit(format!("FAIL {subject} {check}: {detail}"));
    }

    pub fn note(&mut self, text: &str) {
        self.emit(format!("# {text}"));
    }

    /// A line printed verbatim (not counted).
    pub fn raw(&mut self, text: &str) {
        self.emit(text.to_string());
    }

    pub fn failed(&self) -> u32 {
        self.failed
    }

    pub fn summary(&self) -> String {
        format!("{} passed, {} failed", self.passed, self.failed)
    }

    /// Prints the summary line; the exit code of a run: failure if any check failed.
    pub fn finish(&self) -> ExitCode {
        println!("{}", self.summary());
        if self.failed == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    }

    #[cfg(test)]
    pub fn lines(&self) -> &[String] {
        &self.lines
    }
}

/// Why a phase stopped: the step that failed.
#[derive(Debug)]
pub struct Stop {
    pub step: &'static str,
}

/// A sequence of named checks for one subject, where a failed step makes every later check
/// of the phase fail as "skipped" (counted as failed, so both drivers always report the same
/// number of checks).
pub struct Phase<'a> {
    rep: &'a mut Reporter,
    subject: String,
    names: &'static [&'static str],
    done: Vec<&'static str>,
}

impl<'a> Phase<'a> {
    pub fn new(rep: &'a mut Reporter, subject: String, names: &'static [&'static str]) -> Self {
        Phase {
            rep,
            subject,
            names,
            done: Vec::new(),
        }
    }

    fn mark(&mut self, name: &'static str) {
        debug_assert!(self.names.contains(&name), "check {name} not declared");
        debug_assert!(!self.done.contains(&name), "check {name} reported twice");
        self.done.push(name);
    }

    pub fn pass(&mut self, name: &'static str) {
        self.mark(name);
        self.rep.pass(&self.subject, name);
    }

    pub fn fail(&mut self, name: &'static str, detail: &str) {
        self.mark(name);
        self.rep.fail(&self.subject, name, detail);
    }

    pub fn note(&mut self, text: &str) {
        let line = format!("{} {text}", self.subject);
        self.rep.note(&line);
    }

    /// A step later checks depend on: PASS and return the value, or FAIL and stop the phase.
    pub fn step<T>(&mut self, name: &'static str, r: Result<T, String>) -> Result<T, Stop> {
        match r {
            Ok(v) => {
                self.pass(name);
                Ok(v)
            }
            Err(detail) => {
                self.fail(name, &detail);
                Err(Stop { step: name })
            }
        }
    }

    /// A check nothing depends on.
    pub fn expect(&mut self, name: &'static str, ok: bool, detail: impl FnOnce() -> String) {
        if ok {
            self.pass(name);
        } else {
            let d = detail();
            self.fail(name, &d);
        }
    }

    /// A check nothing depends on, whose outcome is a `Result`: PASS, or FAIL with the error.
    pub fn result(&mut self, name: &'static str, r: Result<(), String>) {
        match r {
            Ok(()) => self.pass(name),
            Err(detail) => self.fail(name, &detail),
        }
    }

    /// Report every check not reported yet as a failure: skipped because of `why`.
    pub fn skip_rest(&mut self, why: &str) {
        let names = self.names;
        for name in names {
            if !self.done.contains(name) {
                self.fail(name, &format!("skipped: {why}"));
            }
        }
    }

    /// End the phase: checks a failed step prevented are reported as skipped failures.
    pub fn finish(mut self, outcome: Result<(), Stop>) {
        let why = match outcome {
            Ok(()) => "not reached".to_string(),
            Err(stop) => format!("{} failed", stop.step),
        };
        self.skip_rest(&why);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAMES: &[&str] = &["a", "b", "c", "d"];

    #[test]
    fn pass_and_fail_lines() {
        let mut rep = Reporter::collect();
        rep.pass("edu vfio-pci", "group-open");
        rep.fail("edu vfio-pci-rs", "get-info-flags", "expected 0x3 got 0x2");
        rep.note("hello");
        assert_eq!(
            rep.lines(),
            [
                "PASS edu vfio-pci group-open",
                "FAIL edu vfio-pci-rs get-info-flags: expected 0x3 got 0x2",
                "# hello",
            ]
        );
        assert_eq!(rep.summary(), "1 passed, 1 failed");
        assert_eq!(rep.failed(), 1);
    }

    #[test]
    fn tally_per_device_type() {
        let mut rep = Reporter::collect();
        rep.pass("edu vfio-pci", "a");
        rep.pass("edu vfio-pci-rs", "a");
        rep.fail("edu vfio-pci-rs", "b", "x");
        rep.pass("edu parity", "a");
        rep.pass("igb vfio-pci", "a");
        rep.pass("kernel", "no-warn");
        assert_eq!(
            rep.tally_lines(),
            [
                "edu: 4 checks (parity 1/1, vfio-pci 1/1, vfio-pci-rs 1/2)",
                "igb: 1 checks (vfio-pci 1/1)",
                "kernel: 1 checks (- 1/1)",
            ]
        );
    }

    #[test]
    fn multi_line_detail_stays_on_one_line() {
        let mut rep = Reporter::collect();
        rep.fail("x", "y", "one\ntwo");
        assert_eq!(rep.lines(), ["FAIL x y: one | two"]);
    }

    #[test]
    fn failed_step_skips_the_rest_as_failures() {
        let mut rep = Reporter::collect();
        let mut p = Phase::new(&mut rep, "edu vfio-pci".into(), NAMES);
        let r = (|| {
            let v = p.step("a", Ok::<_, String>(7))?;
            assert_eq!(v, 7);
            p.expect("b", false, || "nope".into());
            p.step::<()>("c", Err("ENOENT".into()))?;
            p.pass("d");
            Ok(())
        })();
        p.finish(r);
        assert_eq!(
            rep.lines(),
            [
                "PASS edu vfio-pci a",
                "FAIL edu vfio-pci b: nope",
                "FAIL edu vfio-pci c: ENOENT",
                "FAIL edu vfio-pci d: skipped: c failed",
            ]
        );
        assert_eq!(rep.summary(), "1 passed, 3 failed");
    }

    #[test]
    fn result_checks() {
        let mut rep = Reporter::collect();
        let mut p = Phase::new(&mut rep, "t mixed".into(), NAMES);
        p.result("a", Ok(()));
        p.result("b", Err("EBUSY".into()));
        p.finish(Ok(()));
        assert_eq!(rep.lines()[0], "PASS t mixed a");
        assert_eq!(rep.lines()[1], "FAIL t mixed b: EBUSY");
        assert_eq!(rep.summary(), "1 passed, 3 failed");
    }

    #[test]
    fn blocked_phase_fails_every_check() {
        let mut rep = Reporter::collect();
        let mut p = Phase::new(&mut rep, "edu vfio-pci-rs".into(), NAMES);
        p.skip_rest("bind failed");
        p.finish(Ok(()));
        assert_eq!(rep.summary(), "0 passed, 4 failed");
        assert_eq!(
            rep.lines()[0],
            "FAIL edu vfio-pci-rs a: skipped: bind failed"
        );
    }

    #[test]
    fn complete_phase_adds_nothing() {
        let mut rep = Reporter::collect();
        let mut p = Phase::new(&mut rep, "s".into(), &["a"]);
        p.pass("a");
        p.finish(Ok(()));
        assert_eq!(rep.summary(), "1 passed, 0 failed");
    }
}
