// SPDX-License-Identifier: GPL-2.0

//! A kernel read-write semaphore.
//!
//! [`RwSemaphore<T>`] wraps a `struct rw_semaphore` and the data it protects. Readers get a
//! [`ReadGuard`] (shared access, any number at once), a writer a [`WriteGuard`] (exclusive
//! access). Code that must only run with the semaphore held takes a guard as its argument, so
//! the rule is in the types.
//!
//! C header: [`include/linux/rwsem.h`](srctree/include/linux/rwsem.h)

use super::LockClassKey;
use crate::{bindings, prelude::*, str::CStr, types::NotThreadSafe, types::Opaque};
use core::{
    cell::UnsafeCell,
    marker::PhantomPinned,
    ops::{Deref, DerefMut},
};

/// Creates a [`RwSemaphore`] initialiser with the given name and a new lock class.
///
/// It uses the name if one is given, otherwise it generates one based on the file name and
/// line number.
#[macro_export]
macro_rules! new_rwsem {
    ($inner:expr $(, $name:literal)? $(,)?) => {
        $crate::sync::RwSemaphore::new(
            $inner, $crate::optional_name!($($name)?), $crate::static_lock_class!())
    };
}
pub use new_rwsem;

/// A read-write semaphore protecting a `T` (`struct rw_semaphore`).
///
/// Sleeping lock: readers share it, a writer holds it alone.
///
/// # Invariants
///
/// `sem` was initialised by `__init_rwsem()`; `data` is only accessed through a guard, which
/// holds `sem` for reading ([`ReadGuard`], shared access) or writing ([`WriteGuard`],
/// exclusive access).
#[pin_data]
pub struct RwSemaphore<T: ?Sized> {
    #[pin]
    sem: Opaque<bindings::rw_semaphore>,
    // The C lock cannot move once initialised.
    #[pin]
    _pin: PhantomPinned,
    data: UnsafeCell<T>,
}

// SAFETY: The semaphore can be moved to another thread with its data if the data can.
unsafe impl<T: ?Sized + Send> Send for RwSemaphore<T> {}

// SAFETY: Readers on several threads share `&T` (so `T: Sync`); a writer on any thread gets
// `&mut T` (so `T: Send`).
unsafe impl<T: ?Sized + Send + Sync> Sync for RwSemaphore<T> {}

impl<T> RwSemaphore<T> {
    /// Creates a semaphore protecting `data`, in lockdep class `key` named `name`.
    pub fn new(
        data: T,
        name: &'static CStr,
        key: Pin<&'static LockClassKey>,
    ) -> impl PinInit<Self> {
        pin_init!(Self {
            data: UnsafeCell::new(data),
            _pin: PhantomPinned,
            // SAFETY: `slot` is valid for writes while the closure runs; `name` and `key` are
            // static.
            sem <- Opaque::ffi_init(|slot| unsafe {
                bindings::__init_rwsem(slot, name.as_char_ptr(), key.as_ptr())
            }),
        })
    }
}

impl<T: ?Sized> RwSemaphore<T> {
    /// Takes the semaphore for reading, sleeping until no writer holds it (`down_read()`).
    pub fn read(&self) -> ReadGuard<'_, T> {
        // SAFETY: `sem` is initialised, by the type invariant.
        unsafe { bindings::down_read(self.sem.get()) };
        // SAFETY: The semaphore is held for reading, just above.
        unsafe { ReadGuard::new(self) }
    }

    /// Takes the semaphore for writing, sleeping until nobody holds it (`down_write()`).
    pub fn write(&self) -> WriteGuard<'_, T> {
        // SAFETY: `sem` is initialised, by the type invariant.
        unsafe { bindings::down_write(self.sem.get()) };
        // SAFETY: The semaphore is held for writing, just above.
        unsafe { WriteGuard::new(self) }
    }

    /// Takes the semaphore for reading if no writer holds it (`down_read_trylock()`).
    pub fn try_read(&self) -> Option<ReadGuard<'_, T>> {
        // SAFETY: `sem` is initialised, by the type invariant.
        if unsafe { bindings::down_read_trylock(self.sem.get()) } == 0 {
            return None;
        }
        // SAFETY: The trylock succeeded, so the semaphore is held for reading.
        Some(unsafe { ReadGuard::new(self) })
    }

    /// Takes the semaphore for writing if nobody holds it (`down_write_trylock()`).
    pub fn try_write(&self) -> Option<WriteGuard<'_, T>> {
        // SAFETY: `sem` is initialised, by the type invariant.
        if unsafe { bindings::down_write_trylock(self.sem.get()) } == 0 {
            return None;
        }
        // SAFETY: The trylock succeeded, so the semaphore is held for writing.
        Some(unsafe { WriteGuard::new(self) })
    }
}

/// Shared access to the data of a [`RwSemaphore`] held for reading.
///
/// # Invariants
///
/// `sem` is held for reading by this task; the guard releases it on drop.
#[must_use = "the semaphore is released when the guard is dropped"]
pub struct ReadGuard<'a, T: ?Sized> {
    sem: &'a RwSemaphore<T>,
    // Released by the task that took it, as lockdep expects.
    _not_send: NotThreadSafe,
}

impl<'a, T: ?Sized> ReadGuard<'a, T> {
    /// # Safety
    ///
    /// The caller holds `sem` for reading and hands that hold to the guard.
    unsafe fn new(sem: &'a RwSemaphore<T>) -> Self {
        // INVARIANT: By the safety requirements, `sem` is held for reading.
        Self {
            sem,
            _not_send: NotThreadSafe,
        }
    }
}

impl<T: ?Sized> Deref for ReadGuard<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        // SAFETY: Held for reading, so no writer has `&mut T`.
        unsafe { &*self.sem.data.get() }
    }
}

impl<T: ?Sized> Drop for ReadGuard<'_, T> {
    fn drop(&mut self) {
        // SAFETY: By the type invariant, we hold the semaphore for reading.
        unsafe { bindings::up_read(self.sem.sem.get()) };
    }
}

/// Exclusive access to the data of a [`RwSemaphore`] held for writing.
///
/// # Invariants
///
/// `sem` is held for writing by this task; the guard releases it on drop.
#[must_use = "the semaphore is released when the guard is dropped"]
pub struct WriteGuard<'a, T: ?Sized> {
    sem: &'a RwSemaphore<T>,
    // Released by the task that took it, as lockdep expects.
    _not_send: NotThreadSafe,
}

impl<'a, T: ?Sized> WriteGuard<'a, T> {
    /// Turns the write hold into a read hold without letting another writer in between
    /// (`downgrade_write()`).
    pub fn downgrade(self) -> ReadGuard<'a, T> {
        let sem = self.sem;
        core::mem::forget(self);
        // SAFETY: We held the semaphore for writing; the forgotten guard will not release it.
        unsafe { bindings::downgrade_write(sem.sem.get()) };
        // SAFETY: The semaphore is now held for reading.
        unsafe { ReadGuard::new(sem) }
    }

    /// # Safety
    ///
    /// The caller holds `sem` for writing and hands that hold to the guard.
    unsafe fn new(sem: &'a RwSemaphore<T>) -> Self {
        // INVARIANT: By the safety requirements, `sem` is held for writing.
        Self {
            sem,
            _not_send: NotThreadSafe,
        }
    }
}

impl<T: ?Sized> Deref for WriteGuard<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        // SAFETY: Held for writing, so access is exclusive.
        unsafe { &*self.sem.data.get() }
    }
}

impl<T: ?Sized> DerefMut for WriteGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: Held for writing, so access is exclusive.
        unsafe { &mut *self.sem.data.get() }
    }
}

impl<T: ?Sized> Drop for WriteGuard<'_, T> {
    fn drop(&mut self) {
        // SAFETY: By the type invariant, we hold the semaphore for writing.
        unsafe { bindings::up_write(self.sem.sem.get()) };
    }
}

#[macros::kunit_tests(rust_rwsem)]
mod tests {
    use super::*;

    #[test]
    fn readers_share() -> Result {
        let sem = KBox::pin_init(new_rwsem!(7u32), GFP_KERNEL)?;
        let first = sem.read();
        let second = sem.try_read().ok_or(EBUSY)?;
        assert_eq!(*first + *second, 14);
        assert!(sem.try_write().is_none());
        Ok(())
    }

    #[test]
    fn writer_excludes() -> Result {
        let sem = KBox::pin_init(new_rwsem!(0u32), GFP_KERNEL)?;
        {
            let mut w = sem.write();
            *w = 42;
            assert!(sem.try_read().is_none());
            assert!(sem.try_write().is_none());
        }
        assert_eq!(*sem.try_read().ok_or(EBUSY)?, 42);
        assert!(sem.try_write().is_some());
        Ok(())
    }

    #[test]
    fn downgrade_keeps_writers_out() -> Result {
        let sem = KBox::pin_init(new_rwsem!(1u32), GFP_KERNEL)?;
        let mut w = sem.write();
        *w = 2;
        let r = w.downgrade();
        assert_eq!(*r, 2);
        assert!(sem.try_write().is_none());
        assert_eq!(*sem.try_read().ok_or(EBUSY)?, 2);
        drop(r);
        assert!(sem.try_write().is_some());
        Ok(())
    }
}
