//! Protected requests between the entry's synchronous calls (`plan`, `planVerified`,
//! `planStored` in `worker_entry`): what the first call learned is kept here under a
//! number, so the later calls take that number instead of the request's strings and
//! token crossing into Wasm again, and the token's claims are not looked up again.
//!
//! A request the entry abandons between two calls (a WebCrypto failure, a thrown
//! error) never comes back for its entry, so nothing may depend on entries being
//! taken: the table is a ring of fixed size, and a new entry overwrites whatever was
//! in its slot. A number whose slot was overwritten finds nothing, and its request
//! takes the full path, which decides from the request itself: slower, never wrong.
//! Each number is used once: the call that takes it removes it.

/// A ring of `N` slots; number `n` lives in slot `n % N` until it is taken or
/// overwritten. `N` is a power of two, so numbers wrapping past `u32::MAX` keep their
/// turn: the slots of `u32::MAX` and `0` are neighbours, not the same.
pub struct Pending<T> {
    slots: Vec<Option<(u32, T)>>,
    next: u32,
}

impl<T> Pending<T> {
    /// Room for `capacity` requests in flight at once (more than an isolate has): a
    /// power of two up to 2³¹.
    pub fn new(capacity: usize) -> Self {
        Self::starting_at(capacity, 0)
    }

    /// Like [`new`](Self::new), handing out `first` first.
    pub fn starting_at(capacity: usize, first: u32) -> Self {
        assert!(
            capacity.is_power_of_two() && capacity <= 1 << 31,
            "capacity must be a power of two up to 2^31"
        );
        Pending {
            slots: std::iter::repeat_with(|| None).take(capacity).collect(),
            next: first,
        }
    }

    fn slot(&self, number: u32) -> usize {
        number as usize % self.slots.len()
    }

    /// Keeps `value`, and returns its number and the value as kept.
    pub fn insert(&mut self, value: T) -> (u32, &T) {
        let number = self.next;
        self.next = self.next.wrapping_add(1);
        let slot = self.slot(number);
        let (_, kept) = self.slots[slot].insert((number, value));
        (number, kept)
    }

    /// The value kept under `number`, if it is still there.
    #[cfg(test)]
    pub fn get(&self, number: u32) -> Option<&T> {
        let slot = self.slot(number);
        match &self.slots[slot] {
            Some((n, value)) if *n == number => Some(value),
            _ => None,
        }
    }

    /// Removes and returns the value kept under `number`, if it is still there.
    pub fn take(&mut self, number: u32) -> Option<T> {
        let slot = self.slot(number);
        match &self.slots[slot] {
            Some((n, _)) if *n == number => self.slots[slot].take().map(|(_, value)| value),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_is_taken_once_by_its_own_number() {
        let mut pending = Pending::new(4);
        let a = pending.insert("a").0;
        let b = pending.insert("b").0;
        assert_ne!(a, b);
        assert_eq!(pending.get(b), Some(&"b"));
        assert_eq!(pending.take(a), Some("a"));
        assert_eq!(pending.take(a), None);
        assert_eq!(pending.get(a), None);
        assert_eq!(pending.take(b), Some("b"));
    }

    #[test]
    fn abandoned_entries_are_overwritten_and_their_numbers_find_nothing() {
        let mut pending = Pending::new(4);
        let abandoned = pending.insert(0).0;
        let live: Vec<u32> = (1..=4).map(|i| pending.insert(i).0).collect();
        // The fifth insert reused the abandoned entry's slot: its number is now
        // unknown, not an alias for someone else's request.
        assert_eq!(pending.take(abandoned), None);
        assert_eq!(pending.get(abandoned), None);
        for (i, number) in live.into_iter().enumerate() {
            assert_eq!(pending.take(number), Some(i as u32 + 1));
        }
    }

    #[test]
    #[should_panic(expected = "power of two")]
    fn a_capacity_that_would_alias_across_the_wrap_is_refused() {
        // 2³² % 3 == 1: u32::MAX and 0 would share a slot.
        let _ = Pending::<()>::new(3);
    }

    #[test]
    fn numbers_wrap_without_colliding_with_a_live_entry() {
        let mut pending = Pending::starting_at(4, u32::MAX - 1);
        let before = pending.insert('x').0;
        let at_max = pending.insert('y').0;
        let wrapped = pending.insert('z').0;
        assert_eq!((before, at_max, wrapped), (u32::MAX - 1, u32::MAX, 0));
        assert_eq!(pending.take(before), Some('x'));
        assert_eq!(pending.take(at_max), Some('y'));
        assert_eq!(pending.take(wrapped), Some('z'));
        // A number that was never handed out finds nothing.
        assert_eq!(pending.take(7), None);
    }
}
