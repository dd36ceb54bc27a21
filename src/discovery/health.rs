//! Rise/fall hysteresis of one member, free of time and I/O so it can be tested as a table:
//! an address joins after `rise` successes in a row and leaves after `fall` failures in a row;
//! a real request that cannot connect takes it out of routing at once.

use crate::pool::State;

/// The rise/fall hysteresis of one member, free of time and I/O so it can be tested as a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Health {
    rise: u32,
    fall: u32,
    pub(crate) state: State,
    pub(crate) routed: bool,
    pub(crate) ok: u32,
    pub(crate) fail: u32,
}

/// What an observation did to a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Change {
    None,
    /// Reached `rise`: now routed.
    Joined,
    /// Was leaving, is healthy again.
    Recovered,
    /// First failure of a healthy member; still routed.
    Failing,
    /// A real request could not connect: no longer routed, but still a member.
    Unrouted,
    /// Reached `fall`: no longer a member.
    Left,
    /// Failed before ever joining: forgotten.
    Dropped,
}

impl Health {
    /// A member starts with the one success that found it.
    pub(crate) fn found(rise: u32, fall: u32) -> (Health, Change) {
        let mut h = Health {
            rise,
            fall,
            state: State::Joining,
            routed: false,
            ok: 0,
            fail: 0,
        };
        let change = h.observe(true);
        (h, change)
    }

    pub(crate) fn observe(&mut self, success: bool) -> Change {
        if success {
            self.ok += 1;
            self.fail = 0;
            match self.state {
                State::Joining | State::Leaving if self.routed => {
                    self.state = State::Healthy;
                    Change::Recovered
                }
                State::Joining | State::Leaving if self.ok >= self.rise => {
                    let was_joining = self.state == State::Joining;
                    self.state = State::Healthy;
                    self.routed = true;
                    if was_joining {
                        Change::Joined
                    } else {
                        Change::Recovered
                    }
                }
                _ => Change::None,
            }
        } else {
            self.ok = 0;
            self.fail += 1;
            match self.state {
                State::Joining => Change::Dropped,
                _ if self.fail >= self.fall => {
                    self.state = State::Leaving;
                    self.routed = false;
                    Change::Left
                }
                State::Healthy => {
                    self.state = State::Leaving;
                    Change::Failing
                }
                State::Leaving => Change::None,
            }
        }
    }

    /// A real request could not connect: out of routing at once, and one failure counted.
    /// Further reports while it is out of routing add nothing; the checks decide.
    pub(crate) fn connect_failed(&mut self) -> Change {
        if !self.routed {
            return Change::None;
        }
        let change = self.observe(false);
        self.routed = false;
        self.state = State::Leaving;
        match change {
            Change::Left => Change::Left,
            _ => Change::Unrouted,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Change::*;
    use State::*;

    fn run(rise: u32, fall: u32, steps: &str) -> Vec<(State, bool, Change)> {
        let (mut h, first) = Health::found(rise, fall);
        let mut out = vec![(h.state, h.routed, first)];
        for c in steps.chars() {
            let change = match c {
                '+' => h.observe(true),
                '-' => h.observe(false),
                'x' => h.connect_failed(),
                _ => unreachable!("test alphabet is + - x"),
            };
            out.push((h.state, h.routed, change));
        }
        out
    }

    #[test]
    fn hysteresis_table() {
        type Case<'a> = (u32, u32, &'a str, &'a [(State, bool, Change)]);
        let cases: &[Case] = &[
            // rise 2: found, then one more success joins.
            (
                2,
                2,
                "+",
                &[(Joining, false, None), (Healthy, true, Joined)],
            ),
            // rise 1: the finding probe is enough.
            (1, 2, "", &[(Healthy, true, Joined)]),
            // A failure while joining forgets the address.
            (
                3,
                2,
                "+-",
                &[
                    (Joining, false, None),
                    (Joining, false, None),
                    (Joining, false, Dropped),
                ],
            ),
            // fall 2: one failure is "leaving" but still routed; a success recovers.
            (
                1,
                2,
                "-+",
                &[
                    (Healthy, true, Joined),
                    (Leaving, true, Failing),
                    (Healthy, true, Recovered),
                ],
            ),
            // fall 2: two failures leave.
            (
                1,
                2,
                "--",
                &[
                    (Healthy, true, Joined),
                    (Leaving, true, Failing),
                    (Leaving, false, Left),
                ],
            ),
            // fall 1: one failure leaves.
            (
                1,
                1,
                "-",
                &[(Healthy, true, Joined), (Leaving, false, Left)],
            ),
            // A failed request unroutes at once and counts as one failure; one more check failure leaves.
            (
                1,
                2,
                "x-",
                &[
                    (Healthy, true, Joined),
                    (Leaving, false, Unrouted),
                    (Leaving, false, Left),
                ],
            ),
            // Repeated request failures count once; rise successes bring it back.
            (
                2,
                3,
                "+xx++",
                &[
                    (Joining, false, None),
                    (Healthy, true, Joined),
                    (Leaving, false, Unrouted),
                    (Leaving, false, None),
                    (Leaving, false, None),
                    (Healthy, true, Recovered),
                ],
            ),
            // fall 1 and a failed request: gone at once.
            (
                1,
                1,
                "x",
                &[(Healthy, true, Joined), (Leaving, false, Left)],
            ),
        ];
        for (rise, fall, steps, expected) in cases {
            assert_eq!(
                &run(*rise, *fall, steps),
                expected,
                "rise {rise} fall {fall} steps {steps:?}"
            );
        }
    }
}
