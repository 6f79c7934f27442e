//! qlib's expression language: `Mean($close, 5) / Ref($close, 1) - 1`.
//!
//! Syntax: `$field`, numbers, operator calls (`Mean($close, 5)`), `+ - * / **`, comparisons `> >= < <= == !=`,
//! `&` and `|`, parentheses, and unary minus (which qlib lacks). Precedence, loosest first:
//!
//! | level | operators | associativity |
//! |---|---|---|
//! | 1 | `\|` (Or) | left |
//! | 2 | `&` (And) | left |
//! | 3 | `> >= < <= == !=` | none: `a < b < c` is an error |
//! | 4 | `+ -` | left |
//! | 5 | `* /` | left |
//! | 6 | unary `-`, `+` | prefix |
//! | 7 | `**` (Power) | right; `-2 ** 2` is `-(2 ** 2)` |
//!
//! qlib evaluates the text as Python, where `&` and `|` bind tighter than comparisons (`$a > 1 & $b < 2` means
//! `$a > (1 & $b) < 2`) and comparisons chain silently; here `$a > 1 & $b < 2` means `($a > 1) & ($b < 2)` and
//! a chained comparison is rejected. Every operator's arguments are checked when parsing, with the byte position
//! of the problem. The canonical text of an [`Expr`] (its `Display`) is the same for every spelling of the same
//! tree, which is what caches key on.
//!
//! [`evaluate`] computes expressions for one instrument (see `eval` for the rules that make results
//! independent of the rows requested); `query::Engine::features` runs it over many instruments.

/// Stack left below which a recursive step (parsing, evaluating) moves to a new segment of [`STACK_SEGMENT`]
/// bytes (`stacker`): trees up to the parser's depth limit never overflow a small thread stack.
const STACK_RED_ZONE: usize = 256 * 1024;
const STACK_SEGMENT: usize = 4 * 1024 * 1024;

mod ast;
mod eval;
mod kernels;
mod parse;

pub use ast::{Binary, Expr, ExtWindow, Extent, Pair, Rolling, Unary, Window};
pub use eval::{Column, Fields, Query, Scratch, StoreFields, domain, evaluate};
pub use parse::parse;
