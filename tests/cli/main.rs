//! Integration tests of the `kmsecrets` binary with the `local` provider (no
//! AWS, no network): binding attacks, bad inputs, in-place rewrites (`edit`,
//! `rotate`, `--merge-into`), multi-document streams, value sources, output
//! determinism and the small commands.
//!
//! Every error case checks the CLI contract of DESIGN.md "CLI": exit code
//! ≠ 0, stderr exactly one line starting with `error: `, no panic, nothing on
//! stdout, no plaintext in the message, and a FILE rewritten in place is
//! byte-identical after a failure (nothing half-written).
//!
//! Each command runs with an empty environment (plus PATH) so the developer's
//! `KMSECRETS_*`, `AWS_*`, `VISUAL` and `EDITOR` cannot change the outcome.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

mod aws_errors;
mod bad_input;
mod binding;
mod edit;
mod fleet;
mod merge;
mod misc;
mod output;
mod papercuts;
mod properties;
mod review;
mod rotate;
mod sealing_files;
mod templates;
mod values;
