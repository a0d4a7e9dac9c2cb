//! The shared vocabulary of backends and the register cache: which [`StateClass`] moves each
//! field, and which cache slot ([`Reg`]) holds it.
//!
//! This module sits below both [`crate::backend`] and [`crate::cache`] and depends on neither
//! (only on the spec crate): a backend moves classes and, where it can, single slots
//! ([`Backend::load_slots`](crate::backend::Backend::load_slots)); the cache tracks slots.
//! The slot layout is one table (the `slot_table!` invocation in `slots/reg.rs`); slot indices,
//! [`NR_REGS`], the class of each slot and the class masks are computed from it.
//!
//! `backend::{StateClass, ClassSet}` and `cache::{Reg, NR_REGS, fields_of}` re-export these
//! beside the items that use them.

mod class;
mod reg;

pub use class::{ClassSet, StateClass};
pub use reg::{NR_REGS, Reg, RegSet, fields_of};
