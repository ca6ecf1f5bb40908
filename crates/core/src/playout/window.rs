//! Two sliding windows over time-stamped samples: the smallest value of the last `span`
//! seconds ([`SlidingMin`]), and the largest of the last `span` seconds in one-second buckets
//! ([`DecayingMax`]).

use std::collections::VecDeque;

/// The smallest value seen in the last `span` seconds (a monotonic queue: amortised O(1)).
#[derive(Debug, Clone)]
pub struct SlidingMin {
    span: f64,
    q: VecDeque<(f64, f64)>,
}

impl SlidingMin {
    /// A window of `span` seconds.
    pub fn new(span: f64) -> SlidingMin {
        SlidingMin {
            span,
            q: VecDeque::new(),
        }
    }

    /// Adds `v` seen at time `t` (seconds, non-decreasing).
    pub fn push(&mut self, t: f64, v: f64) {
        while self.q.back().is_some_and(|&(_, b)| b >= v) {
            self.q.pop_back();
        }
        self.q.push_back((t, v));
        while self.q.front().is_some_and(|&(t0, _)| t0 < t - self.span) {
            self.q.pop_front();
        }
    }

    /// The smallest value of the window, if any.
    pub fn min(&self) -> Option<f64> {
        self.q.front().map(|&(_, v)| v)
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        self.q.clear();
    }

    /// Moves every value by `dv` (the quantity it measures was re-based).
    pub fn shift(&mut self, dv: f64) {
        for s in self.q.iter_mut() {
            s.1 += dv;
        }
    }
}

/// The largest value seen in the current second and the `seconds − 1` before it: what a
/// target sized from it forgets a second at a time.
#[derive(Debug, Clone)]
pub struct DecayingMax {
    buckets: Vec<f64>,
    /// The second (floor of the time) the newest bucket is for.
    sec: Option<i64>,
}

impl DecayingMax {
    /// A window of `seconds` one-second buckets (≥ 1).
    pub fn new(seconds: usize) -> DecayingMax {
        DecayingMax {
            buckets: vec![f64::NEG_INFINITY; seconds.max(1)],
            sec: None,
        }
    }

    fn advance(&mut self, t: f64) {
        let s = t.floor() as i64;
        let n = self.buckets.len() as i64;
        match self.sec {
            None => self.sec = Some(s),
            Some(cur) if s > cur => {
                for k in (cur + 1)..=s.min(cur + n) {
                    self.buckets[k.rem_euclid(n) as usize] = f64::NEG_INFINITY;
                }
                self.sec = Some(s);
            }
            Some(_) => {}
        }
    }

    /// Adds `v` seen at time `t` (seconds, non-decreasing).
    pub fn push(&mut self, t: f64, v: f64) {
        self.advance(t);
        let n = self.buckets.len() as i64;
        let i = self.sec.unwrap_or(0).rem_euclid(n) as usize;
        self.buckets[i] = self.buckets[i].max(v);
    }

    /// The largest value of the window as of time `t`, if any.
    pub fn max(&mut self, t: f64) -> Option<f64> {
        self.advance(t);
        let m = self
            .buckets
            .iter()
            .copied()
            .fold(f64::NEG_INFINITY, f64::max);
        m.is_finite().then_some(m)
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        self.buckets.fill(f64::NEG_INFINITY);
        self.sec = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sliding_min_forgets_old_minima() {
        let mut w = SlidingMin::new(2.0);
        w.push(0.0, 5.0);
        w.push(0.5, 3.0);
        w.push(1.0, 4.0);
        assert_eq!(w.min(), Some(3.0));
        w.push(2.6, 6.0);
        assert_eq!(w.min(), Some(4.0));
        w.push(3.1, 7.0);
        assert_eq!(w.min(), Some(6.0));
        w.shift(-1.0);
        assert_eq!(w.min(), Some(5.0));
    }

    #[test]
    fn decaying_max_forgets_a_bucket_per_second() {
        let mut w = DecayingMax::new(3);
        assert_eq!(w.max(0.0), None);
        w.push(0.2, 10.0);
        w.push(1.5, 4.0);
        assert_eq!(w.max(2.9), Some(10.0));
        assert_eq!(w.max(3.0), Some(4.0));
        assert_eq!(w.max(4.0), None);
        assert_eq!(w.max(100.0), None);
        w.push(100.1, 1.0);
        assert_eq!(w.max(100.2), Some(1.0));
    }
}
