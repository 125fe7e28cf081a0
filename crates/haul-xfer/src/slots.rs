//! The concurrency limit: slots granted in strict FIFO order.
//!
//! Every new transfer asks for a slot. It is granted at once if fewer than
//! `limit` slots are held (or the limit is 0, meaning unlimited); otherwise
//! the request joins the back of a queue. A returned slot goes to the head
//! of the queue. Invariant: while the queue is non-empty, `active >= limit`
//! (for a non-zero limit), so a new request can never overtake a queued one.
//!
//! Changing the limit takes effect at once: raising it grants slots to the
//! head of the queue right away, lowering it lets running transfers finish
//! and grants no slot until fewer than the new limit are held. (Docker only
//! stored the new value and kept handing slots over one for one, so queued
//! transfers could be overtaken after a raise and a lowered limit did not
//! apply while a queue existed.)
//!
//! A request that is withdrawn before its slot was granted (its transfer
//! finished or was cancelled while queued) leaves the queue, so a cancelled
//! transfer never waits for a slot it will not use. (Docker left it queued
//! until its turn came.)

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::signal::Signal;
use crate::sync::lock;

/// One transfer's claim on a slot.
#[derive(Debug, Default)]
pub(crate) struct SlotTicket {
    granted: Signal,
    /// Set once the slot (or the queued request) has been given back; only
    /// read and written with the [`Slots`] lock held.
    returned: AtomicBool,
}

impl SlotTicket {
    pub(crate) fn is_granted(&self) -> bool {
        self.granted.is_fired()
    }

    /// Resolves once the slot has been granted.
    pub(crate) async fn granted(&self) {
        self.granted.wait().await;
    }
}

/// The slots of one transfer manager.
#[derive(Debug)]
pub(crate) struct Slots {
    state: Mutex<SlotState>,
}

#[derive(Debug)]
struct SlotState {
    limit: usize,
    active: usize,
    waiting: VecDeque<Arc<SlotTicket>>,
}

impl SlotState {
    fn has_free_slot(&self) -> bool {
        self.limit == 0 || self.active < self.limit
    }

    /// Grants slots to the head of the queue while there are free ones.
    fn grant_queued(&mut self) {
        while self.has_free_slot() {
            let Some(ticket) = self.waiting.pop_front() else {
                break;
            };
            self.active += 1;
            ticket.granted.fire();
        }
    }
}

impl Slots {
    pub(crate) fn new(limit: usize) -> Self {
        Slots {
            state: Mutex::new(SlotState {
                limit,
                active: 0,
                waiting: VecDeque::new(),
            }),
        }
    }

    /// Asks for a slot: granted at once if one is free, else queued.
    pub(crate) fn request(&self) -> Arc<SlotTicket> {
        let ticket = Arc::new(SlotTicket::default());
        let mut state = lock(&self.state);
        if state.waiting.is_empty() && state.has_free_slot() {
            state.active += 1;
            ticket.granted.fire();
        } else {
            state.waiting.push_back(Arc::clone(&ticket));
        }
        ticket
    }

    /// Gives a held slot back (to the head of the queue), or withdraws a
    /// queued request. Only the first call per ticket has an effect.
    pub(crate) fn give_back(&self, ticket: &Arc<SlotTicket>) {
        let mut state = lock(&self.state);
        if ticket.returned.swap(true, Ordering::Relaxed) {
            return;
        }
        if ticket.is_granted() {
            state.active -= 1;
            state.grant_queued();
        } else {
            state.waiting.retain(|queued| !Arc::ptr_eq(queued, ticket));
        }
    }

    pub(crate) fn set_limit(&self, limit: usize) {
        let mut state = lock(&self.state);
        state.limit = limit;
        state.grant_queued();
    }

    pub(crate) fn limit(&self) -> usize {
        lock(&self.state).limit
    }

    /// (slots held, requests queued)
    pub(crate) fn usage(&self) -> (usize, usize) {
        let state = lock(&self.state);
        (state.active, state.waiting.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_granted_up_to_the_limit_then_handed_over_in_order() {
        let slots = Slots::new(2);
        let tickets: Vec<_> = (0..5).map(|_| slots.request()).collect();
        let granted = |t: &[Arc<SlotTicket>]| t.iter().map(|t| t.is_granted()).collect::<Vec<_>>();
        assert_eq!(granted(&tickets), [true, true, false, false, false]);
        slots.give_back(&tickets[1]);
        assert_eq!(granted(&tickets), [true, true, true, false, false]);
        slots.give_back(&tickets[1]); // a second give-back is ignored
        assert_eq!(slots.usage(), (2, 2));
        slots.give_back(&tickets[0]);
        assert_eq!(granted(&tickets), [true, true, true, true, false]);
    }

    #[test]
    fn a_withdrawn_request_leaves_the_queue_without_taking_a_slot() {
        let slots = Slots::new(1);
        let first = slots.request();
        let withdrawn = slots.request();
        let third = slots.request();
        slots.give_back(&withdrawn);
        assert_eq!(slots.usage(), (1, 1));
        slots.give_back(&first);
        assert!(third.is_granted());
        assert!(!withdrawn.is_granted());
    }

    #[test]
    fn limit_zero_means_unlimited() {
        let slots = Slots::new(0);
        let tickets: Vec<_> = (0..100).map(|_| slots.request()).collect();
        assert!(tickets.iter().all(|t| t.is_granted()));
    }

    #[test]
    fn raising_the_limit_starts_queued_requests_in_order() {
        let slots = Slots::new(1);
        let tickets: Vec<_> = (0..4).map(|_| slots.request()).collect();
        slots.set_limit(3);
        let granted: Vec<_> = tickets.iter().map(|t| t.is_granted()).collect();
        assert_eq!(granted, [true, true, true, false]);
        slots.set_limit(0);
        assert!(tickets[3].is_granted());
    }

    #[test]
    fn lowering_the_limit_applies_as_slots_come_back() {
        let slots = Slots::new(3);
        let running: Vec<_> = (0..3).map(|_| slots.request()).collect();
        let queued = slots.request();
        slots.set_limit(1);
        slots.give_back(&running[0]);
        slots.give_back(&running[1]);
        assert!(
            !queued.is_granted(),
            "two slots still held against a limit of 1"
        );
        slots.give_back(&running[2]);
        assert!(queued.is_granted());
        assert_eq!(slots.usage(), (1, 0));
    }
}
