//! Room tests: written next.
