//! Rise/fall hysteresis of one member, free of time and I/O so it can be tested as a table:
//! an address joins after `rise` successes in a row and leaves after `fall` failures in a row;
//! a real request that cannot connect takes it out of routing at once.

use crate::pool::State;

/// What one check saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Seen {
    /// The check passed; `draining` if the answer asked to drain.
    Pass {
        draining: bool,
    },
    Fail,
}

/// The rise/fall hysteresis of one member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Health {
    rise: u32,
    fall: u32,
    pub(crate) state: State,
    /// Requests may go to it: pinned users always, new users unless `draining`.
    pub(crate) routed: bool,
    /// Its last passing answer asked to drain; kept through failed checks, so a draining
    /// member that fails one check does not take new users again.
    pub(crate) draining: bool,
    /// The balancer drains it ([`Health::set_draining`]), whatever it answers.
    ordered: bool,
    /// Its last passing answer asked to drain.
    answered: bool,
    pub(crate) ok: u32,
    pub(crate) fail: u32,
}

/// What an observation did to a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Change {
    None,
    /// Reached `rise`: now routed.
    Joined,
    /// Was leaving, is routed again.
    Recovered,
    /// Asked to drain: keeps its pinned users, takes no new ones.
    Draining,
    /// Stopped asking to drain: takes new users again.
    Undrained,
    /// First failure of a routed member; still routed.
    Failing,
    /// A real request could not connect: no longer routed, but still a member.
    Unrouted,
    /// Reached `fall`: no longer a member.
    Left,
    /// Failed before ever joining: forgotten.
    Dropped,
}

impl Health {
    /// A member starts with the one answer that found it.
    /// A reload's thresholds: the state and the counts so far stay, the next observation is
    /// weighed against the new ones.
    pub(crate) fn set_thresholds(&mut self, rise: u32, fall: u32) {
        (self.rise, self.fall) = (rise, fall);
    }

    pub(crate) fn found(rise: u32, fall: u32, draining: bool) -> (Health, Change) {
        let mut h = Health {
            rise,
            fall,
            state: State::Joining,
            routed: false,
            draining: false,
            ordered: false,
            answered: false,
            ok: 0,
            fail: 0,
        };
        let change = h.observe(Seen::Pass { draining });
        (h, change)
    }

    /// The state a routed member shows.
    fn serving(&self) -> State {
        if self.draining {
            State::Draining
        } else {
            State::Healthy
        }
    }

    pub(crate) fn observe(&mut self, seen: Seen) -> Change {
        let Seen::Pass { draining } = seen else {
            return self.failed();
        };
        self.answered = draining;
        let draining = draining || self.ordered;
        self.fail = 0;
        let was_draining = self.draining;
        match self.state {
            // A draining address takes no users: it does not join while it drains.
            State::Joining if draining => Change::None,
            State::Joining => {
                self.ok += 1;
                if self.ok < self.rise {
                    return Change::None;
                }
                self.routed = true;
                self.state = State::Healthy;
                Change::Joined
            }
            State::Healthy | State::Draining => {
                self.ok += 1;
                self.draining = draining;
                self.state = self.serving();
                match (was_draining, draining) {
                    (false, true) => Change::Draining,
                    (true, false) => Change::Undrained,
                    _ => Change::None,
                }
            }
            State::Leaving => {
                self.ok += 1;
                if !self.routed && self.ok < self.rise {
                    return Change::None;
                }
                self.routed = true;
                self.draining = draining;
                self.state = self.serving();
                Change::Recovered
            }
        }
    }

    fn failed(&mut self) -> Change {
        self.ok = 0;
        self.fail += 1;
        match self.state {
            State::Joining => Change::Dropped,
            _ if self.fail >= self.fall => {
                self.state = State::Leaving;
                self.routed = false;
                Change::Left
            }
            State::Healthy | State::Draining => {
                self.state = State::Leaving;
                Change::Failing
            }
            State::Leaving => Change::None,
        }
    }

    /// A real request could not connect: out of routing at once, and one failure counted.
    /// Further reports while it is out of routing add nothing; the checks decide.
    pub(crate) fn connect_failed(&mut self) -> Change {
        if !self.routed {
            return Change::None;
        }
        let change = self.failed();
        self.routed = false;
        self.state = State::Leaving;
        match change {
            Change::Left => Change::Left,
            _ => Change::Unrouted,
        }
    }

    /// The balancer itself drains it (`on`), or takes that back: as a draining answer would,
    /// but at once and without counting as a check. A joining member does not join while so
    /// drained; a leaving one keeps it through its failures, as with a draining answer.
    pub(crate) fn set_draining(&mut self, on: bool) -> Change {
        self.ordered = on;
        let draining = on || self.answered;
        if self.draining == draining {
            return Change::None;
        }
        self.draining = draining;
        match self.state {
            State::Healthy | State::Draining => {
                self.state = self.serving();
                if draining {
                    Change::Draining
                } else {
                    Change::Undrained
                }
            }
            State::Joining | State::Leaving => Change::None,
        }
    }

    /// New users may be given to it.
    pub(crate) fn in_ring(&self) -> bool {
        self.routed && !self.draining
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One case a line: `rise fall steps | after each step`. A step is `+` a pass, `d` a pass
    /// that asks to drain, `-` a failed check, `x` a request that could not connect; the first
    /// is the answer that found the address. After each: the state's initial (`*` if routed)
    /// and the change.
    const TABLE: &str = "
        # rise 2: found, then one more success joins; rise 1: the finding probe is enough.
        2 2 ++      | J none, H* joined
        1 2 +       | H* joined
        # A failure while joining forgets the address.
        3 2 ++-     | J none, J none, J dropped
        # fall 2: one failure is leaving but still routed; a success recovers; two leave.
        1 2 +-+     | H* joined, L* failing, H* recovered
        1 2 +--     | H* joined, L* failing, L left
        1 1 +-      | H* joined, L left
        # A failed request unroutes at once and counts as one failure.
        1 2 +x-     | H* joined, L unrouted, L left
        # Repeated request failures count once; rise successes bring it back.
        2 3 ++xx++  | J none, H* joined, L unrouted, L none, L none, H* recovered
        1 1 +x      | H* joined, L left
        # A draining address does not join, and its draining answers do not count for rise.
        2 2 dd+d+   | J none, J none, J none, J none, H* joined
        # Draining keeps it routed for its pinned users; it can stop draining.
        1 2 +dd+    | H* joined, D* draining, D* none, H* undrained
        # A draining member that fails a check stays draining when it recovers...
        1 2 +d-d    | H* joined, D* draining, L* failing, D* recovered
        1 2 +d-+    | H* joined, D* draining, L* failing, H* recovered
        # Drained by the balancer (D) and undrained (U): at once, no check counted.
        2 2 ++DU    | J none, H* joined, D* draining, H* undrained
        2 2 +D++U+  | J none, J none, J none, J none, J none, H* joined
        1 2 +D-+    | H* joined, D* draining, L* failing, D* recovered
        1 2 +dD+U   | H* joined, D* draining, D* none, D* none, H* undrained
        # ...and leaves like any member.
        1 2 +d--    | H* joined, D* draining, L* failing, L left
        2 2 ++dxdd  | J none, H* joined, D* draining, L unrouted, L none, D* recovered
    ";

    fn run(rise: u32, fall: u32, steps: &str) -> Vec<String> {
        let mut steps = steps.chars();
        let (mut h, first) = Health::found(rise, fall, steps.next() == Some('d'));
        let mut out = vec![show(&h, first)];
        for c in steps {
            let change = match c {
                '+' => h.observe(Seen::Pass { draining: false }),
                'd' => h.observe(Seen::Pass { draining: true }),
                '-' => h.observe(Seen::Fail),
                'x' => h.connect_failed(),
                'D' => h.set_draining(true),
                'U' => h.set_draining(false),
                _ => unreachable!("test alphabet is + d - x D U"),
            };
            out.push(show(&h, change));
        }
        out
    }

    fn show(h: &Health, change: Change) -> String {
        let state = &h.state.as_str()[..1].to_uppercase();
        let routed = if h.routed { "*" } else { "" };
        format!("{state}{routed} {}", format!("{change:?}").to_lowercase())
    }

    #[test]
    fn hysteresis_table() {
        let mut cases = 0;
        let lines = TABLE.lines().map(str::trim);
        for line in lines.filter(|l| !l.is_empty() && !l.starts_with('#')) {
            let (case, want) = line.split_once('|').expect("a | in every case");
            let words: Vec<&str> = case.split_whitespace().collect();
            let [rise, fall, steps] = words[..] else {
                panic!("rise fall steps: {line:?}");
            };
            let want: Vec<&str> = want.split(',').map(str::trim).collect();
            let got = run(rise.parse().unwrap(), fall.parse().unwrap(), steps);
            assert_eq!(got, want, "{line}");
            cases += 1;
        }
        assert_eq!(cases, 19);
    }

    #[test]
    fn a_draining_member_takes_no_new_users_even_while_failing() {
        let (mut h, _) = Health::found(1, 3, false);
        assert!(h.in_ring());
        h.observe(Seen::Pass { draining: true });
        assert!(h.routed && !h.in_ring());
        h.observe(Seen::Fail);
        assert!(h.routed && !h.in_ring());
        h.observe(Seen::Pass { draining: false });
        assert!(h.in_ring());
    }
}
