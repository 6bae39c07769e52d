//! Order-preserving parallel map on scoped threads, for work that is many independent files.
//!
//! `lint` over thousands of specs is CPU-bound on parsing, and every file is parsed on its own;
//! this spreads them over the machine's cores without a thread pool or a dependency. Small
//! inputs (a handful of files, as in the daemon's usual repository) run on the calling thread.

use std::num::NonZeroUsize;
use std::panic;
use std::sync::{Mutex, OnceLock, PoisonError};
use std::thread;

/// Items a thread takes at a time: enough to make taking them cheap, few enough that threads
/// finish together.
const BATCH: usize = 16;

/// `items.into_iter().map(f).collect()`, with the items spread over up to one thread per core.
/// A panic in `f` is raised again in the caller.
pub fn map<T: Send, R: Send>(items: Vec<T>, f: impl Fn(T) -> R + Sync) -> Vec<R> {
    let threads = if items.len() <= BATCH {
        1
    } else {
        cores().min(items.len().div_ceil(BATCH))
    };
    if threads <= 1 {
        return items.into_iter().map(f).collect();
    }
    let len = items.len();
    let queue = Mutex::new(items.into_iter().enumerate());
    let work = || {
        let mut done = Vec::new();
        loop {
            let batch: Vec<(usize, T)> = queue
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .by_ref()
                .take(BATCH)
                .collect();
            if batch.is_empty() {
                return done;
            }
            done.extend(batch.into_iter().map(|(i, item)| (i, f(item))));
        }
    };
    let mut slots: Vec<Option<R>> = std::iter::repeat_with(|| None).take(len).collect();
    thread::scope(|s| {
        let helpers: Vec<_> = (1..threads).map(|_| s.spawn(work)).collect();
        let mut place = |done: Vec<(usize, R)>| {
            for (i, r) in done {
                slots[i] = Some(r);
            }
        };
        place(work());
        for helper in helpers {
            place(helper.join().unwrap_or_else(|p| panic::resume_unwind(p)));
        }
    });
    slots
        .into_iter()
        .map(|r| r.expect("every item is mapped once"))
        .collect()
}

/// The cores this process may use, asked once: the answer reads cgroup files.
fn cores() -> usize {
    static CORES: OnceLock<usize> = OnceLock::new();
    *CORES.get_or_init(|| thread::available_parallelism().map_or(1, NonZeroUsize::get))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_order_of_the_items() {
        for n in [0, 1, BATCH, BATCH + 1, 10 * BATCH + 3] {
            let items: Vec<usize> = (0..n).collect();
            let expected: Vec<usize> = items.iter().map(|i| i * 2).collect();
            assert_eq!(map(items, |i| i * 2), expected);
        }
    }

    #[test]
    fn a_panic_reaches_the_caller() {
        let caught = panic::catch_unwind(|| {
            map((0..100).collect::<Vec<u32>>(), |i| {
                assert!(i != 77, "item 77")
            })
        });
        assert!(caught.is_err());
    }
}
