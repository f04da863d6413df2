// SPDX-License-Identifier: GPL-2.0

//! Universally unique identifiers (`uuid_t`).
//!
//! C header: [`include/linux/uuid.h`](srctree/include/linux/uuid.h)

use crate::{bindings, error::to_result, prelude::*};

/// The length of a UUID's string form, `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`
/// (`UUID_STRING_LEN`).
pub const STRING_LEN: usize = 36;

/// A UUID, in the byte order of its string form (`uuid_t`).
#[derive(Copy, Clone, Debug, Default, Eq, PartialEq)]
pub struct Uuid(pub [u8; 16]);

impl Uuid {
    /// A new random (version 4) UUID (`uuid_gen()`).
    pub fn generate() -> Self {
        let mut u = bindings::uuid_t::default();
        // SAFETY: `u` is valid for writes.
        unsafe { bindings::uuid_gen(&mut u) };
        Self(u.b)
    }

    /// Parses the first [`STRING_LEN`] bytes of `s` (`uuid_parse()`); `EINVAL` if they are
    /// not a UUID.
    ///
    /// # Examples
    ///
    /// ```
    /// use kernel::uuid::Uuid;
    ///
    /// let u = Uuid::parse(b"bd8d9d2b-5a5f-4f5a-a211-f591514ba1f3")?;
    /// assert_eq!(u.0[0], 0xbd);
    /// assert_eq!(u.0[15], 0xf3);
    /// assert_eq!(Uuid::parse(b"bd8d9d2b-5a5f-4f5a-a211-f591514ba1f"), Err(EINVAL));
    /// assert_eq!(Uuid::parse(b"bd8d9d2b 5a5f-4f5a-a211-f591514ba1f3"), Err(EINVAL));
    /// # Ok::<(), Error>(())
    /// ```
    pub fn parse(s: &[u8]) -> Result<Self> {
        if s.len() < STRING_LEN {
            return Err(EINVAL);
        }
        let mut u = bindings::uuid_t::default();
        // SAFETY: `s` has the `STRING_LEN` bytes `uuid_parse()` reads; `u` is valid for writes.
        to_result(unsafe { bindings::uuid_parse(s.as_ptr().cast(), &mut u) })?;
        Ok(Self(u.b))
    }
}
