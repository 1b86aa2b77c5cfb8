//! A queue that serves devices in turns: the reply pipeline's order.
//!
//! One device that completes a thousand utterances at once must not push
//! another device's one utterance back a thousand places. Work waits in one
//! queue per device; devices take turns, one item each; and a device has at
//! most `per_device` items in flight, so the pipeline's slots stay free for
//! the others whatever one device queues.
//!
//! Sans-I/O: the pipeline holds it under a lock and wakes its dispatcher.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

#[derive(Debug)]
struct Lane<T> {
    waiting: VecDeque<T>,
    in_flight: usize,
    /// In `turns` now.
    queued: bool,
}

/// Items of type `T` queued by key `K` (a device id).
#[derive(Debug)]
pub struct FairQueue<K, T> {
    lanes: HashMap<K, Lane<T>>,
    /// Keys with waiting items and room in flight, in turn order.
    turns: VecDeque<K>,
    per_device: usize,
}

impl<K: Copy + Eq + Hash, T> FairQueue<K, T> {
    /// A queue that lets each key have `per_device` items in flight (at
    /// least 1).
    pub fn new(per_device: usize) -> Self {
        Self { lanes: HashMap::new(), turns: VecDeque::new(), per_device: per_device.max(1) }
    }

    /// Queues `item` behind `key`'s other items.
    pub fn push(&mut self, key: K, item: T) {
        let lane =
            self.lanes.entry(key).or_insert_with(|| Lane { waiting: VecDeque::new(), in_flight: 0, queued: false });
        lane.waiting.push_back(item);
        if !lane.queued && lane.in_flight < self.per_device {
            lane.queued = true;
            self.turns.push_back(key);
        }
    }

    /// The next item, from the key whose turn it is; it counts as in flight
    /// until [`FairQueue::done`] is called with its key.
    pub fn pop(&mut self) -> Option<(K, T)> {
        let key = self.turns.pop_front()?;
        let lane = self.lanes.get_mut(&key).expect("a key in turns has a lane");
        let item = lane.waiting.pop_front().expect("a key in turns has waiting items");
        lane.in_flight += 1;
        lane.queued = !lane.waiting.is_empty() && lane.in_flight < self.per_device;
        if lane.queued {
            self.turns.push_back(key);
        }
        Some((key, item))
    }

    /// An item of `key` is finished: it leaves the in-flight count.
    pub fn done(&mut self, key: K) {
        let Some(lane) = self.lanes.get_mut(&key) else { return };
        lane.in_flight = lane.in_flight.saturating_sub(1);
        if !lane.queued && !lane.waiting.is_empty() && lane.in_flight < self.per_device {
            lane.queued = true;
            self.turns.push_back(key);
        }
        if lane.in_flight == 0 && lane.waiting.is_empty() {
            self.lanes.remove(&key);
        }
    }

    /// Items of `key` waiting (not in flight).
    pub fn waiting(&self, key: K) -> usize {
        self.lanes.get(&key).map_or(0, |l| l.waiting.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_flooding_device_does_not_push_another_back() {
        let mut q = FairQueue::new(2);
        for i in 0..1000 {
            q.push('a', i);
        }
        q.push('b', 0);
        // A's first item, then B's: B waits one place, not a thousand.
        assert_eq!(q.pop(), Some(('a', 0)));
        assert_eq!(q.pop(), Some(('b', 0)));
        // A has its second slot; then it is at its cap and nothing is ready.
        assert_eq!(q.pop(), Some(('a', 1)));
        assert_eq!(q.pop(), None);
        q.done('a');
        assert_eq!(q.pop(), Some(('a', 2)));
        assert_eq!(q.waiting('a'), 997);
    }

    proptest! {
        /// Any pushes, pops and dones: every item comes out once, in its
        /// key's order, and no key ever has more than the cap in flight.
        #[test]
        fn every_item_once_in_order_under_the_cap(ops in proptest::collection::vec((0u8..3, 0u8..4), 0..200), cap in 1usize..4) {
            let mut q = FairQueue::new(cap);
            let mut next = [0u32; 4];
            let mut out: HashMap<u8, Vec<u32>> = HashMap::new();
            let mut flying: HashMap<u8, usize> = HashMap::new();
            for (op, key) in ops {
                match op {
                    0 => { q.push(key, next[key as usize]); next[key as usize] += 1; }
                    1 => if let Some((k, item)) = q.pop() {
                        out.entry(k).or_default().push(item);
                        let f = flying.entry(k).or_default();
                        *f += 1;
                        prop_assert!(*f <= cap);
                    },
                    _ => if flying.get(&key).copied().unwrap_or(0) > 0 {
                        *flying.get_mut(&key).unwrap() -= 1;
                        q.done(key);
                    },
                }
            }
            // Drain: finish everything in flight and pop the rest.
            loop {
                for (k, f) in flying.iter_mut() { while *f > 0 { *f -= 1; q.done(*k); } }
                let Some((k, item)) = q.pop() else { break };
                out.entry(k).or_default().push(item);
                *flying.entry(k).or_default() += 1;
            }
            prop_assert!((0u8..4).all(|k| q.waiting(k) == 0));
            for key in 0u8..4 {
                let got = out.remove(&key).unwrap_or_default();
                prop_assert_eq!(got, (0..next[key as usize]).collect::<Vec<_>>());
            }
        }
    }
}
