//! Text -> [`Expr`]: a lexer with byte positions, a precedence-climbing parser, and validation of every operator's
//! arguments, so a bad expression fails here with a position instead of later with a number.

use super::ast::{Binary, Expr, Pair, Rolling, Unary, Window};
use crate::error::{Error, NameKind, Result};

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    /// A number and whether it was written as an integer (no `.` or exponent).
    Num(f64, bool),
    Field(String),
    Ident(String),
    Str(String),
    LParen,
    RParen,
    Comma,
    Plus,
    Minus,
    Star,
    Slash,
    Pow,
    Amp,
    Pipe,
    Gt,
    Ge,
    Lt,
    Le,
    EqEq,
    Ne,
    End,
}

fn describe(t: &Tok) -> String {
    match t {
        Tok::Num(v, _) => format!("number {v}"),
        Tok::Field(f) => format!("field ${f}"),
        Tok::Ident(i) => format!("name {i}"),
        Tok::Str(s) => format!("string '{s}'"),
        Tok::End => "the end of the expression".into(),
        Tok::LParen => "'('".into(),
        Tok::RParen => "')'".into(),
        Tok::Comma => "','".into(),
        Tok::Plus => "'+'".into(),
        Tok::Minus => "'-'".into(),
        Tok::Star => "'*'".into(),
        Tok::Slash => "'/'".into(),
        Tok::Pow => "'**'".into(),
        Tok::Amp => "'&'".into(),
        Tok::Pipe => "'|'".into(),
        Tok::Gt => "'>'".into(),
        Tok::Ge => "'>='".into(),
        Tok::Lt => "'<'".into(),
        Tok::Le => "'<='".into(),
        Tok::EqEq => "'=='".into(),
        Tok::Ne => "'!='".into(),
    }
}

struct Lexer<'a> {
    text: &'a str,
    pos: usize,
}

fn is_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

impl Lexer<'_> {
    fn err(&self, pos: usize, reason: String) -> Error {
        Error::Expr {
            expr: self.text.to_owned(),
            pos,
            reason,
        }
    }

    fn tokens(mut self) -> Result<Vec<(Tok, usize)>> {
        let mut out = Vec::new();
        loop {
            let rest = &self.text[self.pos..];
            let Some(c) = rest.chars().next() else {
                out.push((Tok::End, self.pos));
                return Ok(out);
            };
            let start = self.pos;
            if c.is_whitespace() {
                self.pos += c.len_utf8();
                continue;
            }
            let two = rest.get(..2).unwrap_or("");
            let (tok, len) = match (c, two) {
                (_, "**") => (Tok::Pow, 2),
                (_, ">=") => (Tok::Ge, 2),
                (_, "<=") => (Tok::Le, 2),
                (_, "==") => (Tok::EqEq, 2),
                (_, "!=") => (Tok::Ne, 2),
                ('(', _) => (Tok::LParen, 1),
                (')', _) => (Tok::RParen, 1),
                (',', _) => (Tok::Comma, 1),
                ('+', _) => (Tok::Plus, 1),
                ('-', _) => (Tok::Minus, 1),
                ('*', _) => (Tok::Star, 1),
                ('/', _) => (Tok::Slash, 1),
                ('&', _) => (Tok::Amp, 1),
                ('|', _) => (Tok::Pipe, 1),
                ('>', _) => (Tok::Gt, 1),
                ('<', _) => (Tok::Lt, 1),
                ('=', _) => {
                    return Err(self.err(
                        start,
                        "a single '=' is not an operator; compare with '=='".into(),
                    ));
                }
                ('$', _) => {
                    if rest[1..].starts_with('$') {
                        return Err(self.err(
                            start,
                            "point-in-time fields ($$name) are not supported".into(),
                        ));
                    }
                    let name: String = rest[1..].chars().take_while(|&c| is_word(c)).collect();
                    if name.is_empty() {
                        return Err(self.err(
                            start,
                            "'$' must be followed by a field name, such as $close".into(),
                        ));
                    }
                    let len = 1 + name.len();
                    (Tok::Field(name), len)
                }
                ('\'' | '"', _) => {
                    let Some(end) = rest[1..].find(c) else {
                        return Err(self.err(
                            start,
                            format!("the string starting here has no closing {c}"),
                        ));
                    };
                    (Tok::Str(rest[1..1 + end].to_owned()), end + 2)
                }
                (c, _) if c.is_ascii_digit() || c == '.' => {
                    let b = rest.as_bytes();
                    let mut i = 0;
                    let mut int = true;
                    while i < b.len() && b[i].is_ascii_digit() {
                        i += 1;
                    }
                    if i < b.len() && b[i] == b'.' {
                        int = false;
                        i += 1;
                        while i < b.len() && b[i].is_ascii_digit() {
                            i += 1;
                        }
                    }
                    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
                        let mut j = i + 1;
                        if j < b.len() && (b[j] == b'+' || b[j] == b'-') {
                            j += 1;
                        }
                        if j < b.len() && b[j].is_ascii_digit() {
                            int = false;
                            i = j;
                            while i < b.len() && b[i].is_ascii_digit() {
                                i += 1;
                            }
                        }
                    }
                    let v: f64 = rest[..i].parse().map_err(|_| {
                        self.err(start, format!("{:?} is not a number", &rest[..i]))
                    })?;
                    if !v.is_finite() {
                        return Err(
                            self.err(start, format!("{} is too large for a number", &rest[..i]))
                        );
                    }
                    (Tok::Num(v, int), i)
                }
                (c, _) if c.is_alphabetic() || c == '_' => {
                    let name: String = rest.chars().take_while(|&c| is_word(c)).collect();
                    let len = name.len();
                    (Tok::Ident(name), len)
                }
                (c, _) => return Err(self.err(start, format!("unexpected character {c:?}"))),
            };
            out.push((tok, start));
            self.pos += len;
        }
    }
}

/// The untyped tree the grammar produces, before operators are checked.
#[derive(Debug, Clone)]
enum Node {
    Num(f64, bool),
    Str(String),
    Field(String),
    Call(String, Vec<(Node, usize)>),
    Neg(Box<(Node, usize)>),
    Bin(Binary, Box<(Node, usize)>, Box<(Node, usize)>),
    /// `first op1 x1 op2 x2 ...` of one binding power, evaluated left to right.
    Chain(Box<(Node, usize)>, Vec<(Binary, (Node, usize))>),
}

/// A run of more operators than this at one binding power is parsed as one flat chain.
const FLAT_CHAIN: usize = 16;

struct Parser<'a> {
    text: &'a str,
    toks: Vec<(Tok, usize)>,
    at: usize,
    /// How many parentheses, calls and unary minuses enclose the current token: bounds the parser's recursion.
    nesting: usize,
    /// The height of the node the last parse function returned: bounds every later walk of the tree.
    height: usize,
}

/// Binding power of a binary operator: lowest first. Comparisons are non-associative.
fn infix(t: &Tok) -> Option<(u8, Binary)> {
    Some(match t {
        Tok::Pipe => (1, Binary::Or),
        Tok::Amp => (2, Binary::And),
        Tok::Gt => (3, Binary::Gt),
        Tok::Ge => (3, Binary::Ge),
        Tok::Lt => (3, Binary::Lt),
        Tok::Le => (3, Binary::Le),
        Tok::EqEq => (3, Binary::Eq),
        Tok::Ne => (3, Binary::Ne),
        Tok::Plus => (4, Binary::Add),
        Tok::Minus => (4, Binary::Sub),
        Tok::Star => (5, Binary::Mul),
        Tok::Slash => (5, Binary::Div),
        _ => return None,
    })
}

const COMPARISON: u8 = 3;

impl Parser<'_> {
    fn peek(&self) -> &Tok {
        &self.toks[self.at].0
    }

    fn pos(&self) -> usize {
        self.toks[self.at].1
    }

    fn next(&mut self) -> (Tok, usize) {
        let t = self.toks[self.at].clone();
        if self.at + 1 < self.toks.len() {
            self.at += 1;
        }
        t
    }

    fn err(&self, pos: usize, reason: String) -> Error {
        Error::Expr {
            expr: self.text.to_owned(),
            pos,
            reason,
        }
    }

    fn expect(&mut self, want: Tok, what: &str) -> Result<()> {
        if *self.peek() == want {
            self.next();
            Ok(())
        } else {
            Err(self.err(
                self.pos(),
                format!("expected {what}, found {}", describe(self.peek())),
            ))
        }
    }

    /// Checks the height of a node about to be built at `pos`; sets it as the last height.
    fn grow(&mut self, height: usize, pos: usize) -> Result<()> {
        if height > MAX_DEPTH {
            return Err(self.err(
                pos,
                format!(
                    "the expression is more than {MAX_DEPTH} operators deep here (each term of a chain such as \
                     a + b + c counts one); split it into named features of a feature set, or sum fewer terms"
                ),
            ));
        }
        self.height = height;
        Ok(())
    }

    /// Enters a parenthesis, call or unary minus at `pos`.
    fn enter(&mut self, pos: usize) -> Result<()> {
        self.nesting += 1;
        if self.nesting > MAX_DEPTH {
            return Err(self.err(
                pos,
                format!("the expression nests more than {MAX_DEPTH} levels of parentheses and calls here"),
            ));
        }
        Ok(())
    }

    /// Parses operators binding at least as tightly as `min`.
    fn expr(&mut self, min: u8) -> Result<(Node, usize)> {
        // A level of nesting costs several frames (KiBs each in a debug build): grow the stack rather than
        // rely on the caller's thread having room for [`MAX_DEPTH`] of them.
        stacker::maybe_grow(
            crate::expr::STACK_RED_ZONE,
            crate::expr::STACK_SEGMENT,
            || self.chain(min),
        )
    }

    fn chain(&mut self, min: u8) -> Result<(Node, usize)> {
        let mut lhs = self.unary()?;
        let mut lhs_height = self.height;
        let mut last_cmp: Option<usize> = None;
        // The current run of operators of one binding power: `a + b - c + ...`.
        let mut run: Vec<(Binary, (Node, usize), usize, usize)> = Vec::new();
        let mut run_bp = 0;
        while let Some((bp, op)) = infix(self.peek()) {
            if bp < min {
                break;
            }
            let pos = self.pos();
            if bp != run_bp && !run.is_empty() {
                (lhs, lhs_height) = self.fold(lhs, lhs_height, std::mem::take(&mut run))?;
            }
            run_bp = bp;
            if bp == COMPARISON {
                if let Some(prev) = last_cmp {
                    return Err(self.err(
                        pos,
                        format!(
                            "comparisons do not chain (the one at byte {prev} is already compared); \
                             write (a < b) & (b < c)"
                        ),
                    ));
                }
                last_cmp = Some(pos);
            }
            self.next();
            let rhs = self.expr(bp + 1)?;
            run.push((op, rhs, pos, self.height));
        }
        if !run.is_empty() {
            (lhs, lhs_height) = self.fold(lhs, lhs_height, run)?;
        }
        self.height = lhs_height;
        Ok(lhs)
    }

    /// `lhs` and a run of operators of one binding power (each with its right operand, position and height) as one
    /// tree: a flat chain when the run is longer than [`FLAT_CHAIN`] (a sum of thousands of terms is one
    /// level deep), else left-nested binary nodes (qlib's tree). Either way evaluated left to right.
    fn fold(
        &mut self,
        lhs: (Node, usize),
        lhs_height: usize,
        run: Vec<(Binary, (Node, usize), usize, usize)>,
    ) -> Result<((Node, usize), usize)> {
        let at = lhs.1;
        if run.len() > FLAT_CHAIN {
            let h = 1 + run.iter().map(|r| r.3).fold(lhs_height, usize::max);
            self.grow(h, run[0].2)?;
            let rest = run.into_iter().map(|(op, rhs, _, _)| (op, rhs)).collect();
            return Ok(((Node::Chain(Box::new(lhs), rest), at), h));
        }
        let (mut lhs, mut h) = (lhs, lhs_height);
        for (op, rhs, pos, rh) in run {
            self.grow(1 + h.max(rh), pos)?;
            h = self.height;
            lhs = (Node::Bin(op, Box::new(lhs), Box::new(rhs)), at);
        }
        Ok((lhs, h))
    }

    /// Unary minus binds tighter than `* /` and looser than `**`: `-x * y` is `(-x) * y`, and as in Python
    /// `-2 ** 2` is `-(2 ** 2)`.
    fn unary(&mut self) -> Result<(Node, usize)> {
        let pos = self.pos();
        if *self.peek() == Tok::Minus {
            self.next();
            self.enter(pos)?;
            let x = self.unary()?;
            self.nesting -= 1;
            self.grow(self.height + 1, pos)?;
            return Ok((Node::Neg(Box::new(x)), pos));
        }
        if *self.peek() == Tok::Plus {
            self.next();
            return self.unary();
        }
        self.power()
    }

    fn power(&mut self) -> Result<(Node, usize)> {
        let base = self.primary()?;
        if *self.peek() == Tok::Pow {
            let (pos, base_height) = (self.pos(), self.height);
            self.next();
            // right-associative, and its right side may carry a unary minus: 2 ** -1
            self.enter(pos)?;
            let exp = self.unary()?;
            self.nesting -= 1;
            self.grow(1 + base_height.max(self.height), pos)?;
            let at = base.1;
            return Ok((Node::Bin(Binary::Power, Box::new(base), Box::new(exp)), at));
        }
        Ok(base)
    }

    fn primary(&mut self) -> Result<(Node, usize)> {
        let (tok, pos) = self.next();
        self.height = 1;
        let node = match tok {
            Tok::Num(v, int) => Node::Num(v, int),
            Tok::Str(s) => Node::Str(s),
            Tok::Field(f) => Node::Field(f),
            Tok::LParen => {
                self.enter(pos)?;
                let inner = self.expr(0)?;
                self.expect(Tok::RParen, "')'")?;
                self.nesting -= 1;
                return Ok(inner);
            }
            Tok::Ident(name) => {
                if *self.peek() != Tok::LParen {
                    return Err(self.err(
                        pos,
                        format!("{name} is not a field or a call; fields start with $ (${name}), operators take arguments ({name}(...))"),
                    ));
                }
                self.next();
                self.enter(pos)?;
                let mut args = Vec::new();
                let mut height = 0;
                if *self.peek() != Tok::RParen {
                    loop {
                        args.push(self.expr(0)?);
                        height = height.max(self.height);
                        if *self.peek() == Tok::Comma {
                            self.next();
                        } else {
                            break;
                        }
                    }
                }
                self.expect(Tok::RParen, "',' or ')'")?;
                self.nesting -= 1;
                self.grow(height + 1, pos)?;
                Node::Call(name, args)
            }
            other => {
                return Err(self.err(
                    pos,
                    format!(
                        "expected a number, a $field or an operator call, found {}",
                        describe(&other)
                    ),
                ));
            }
        };
        Ok((node, pos))
    }
}

/// The deepest expression tree (and the most nested text) the parser accepts, and the evaluator evaluates:
/// every walk of a tree recurses, and this keeps the deepest one well inside a worker thread's 2 MiB stack.
/// Alpha158's deepest factor is 7 deep.
pub const MAX_DEPTH: usize = 128;

/// Parses and validates an expression in qlib's language.
pub fn parse(text: &str) -> Result<Expr> {
    let toks = Lexer { text, pos: 0 }.tokens()?;
    let mut p = Parser {
        text,
        toks,
        at: 0,
        nesting: 0,
        height: 0,
    };
    let root = p.expr(0)?;
    if *p.peek() != Tok::End {
        return Err(p.err(
            p.pos(),
            format!(
                "expected an operator or the end, found {}",
                describe(p.peek())
            ),
        ));
    }
    Lower { text }.expr(root)
}

struct Lower<'a> {
    text: &'a str,
}

const ROLLING: [(&str, Rolling); 20] = [
    ("Mean", Rolling::Mean),
    ("Sum", Rolling::Sum),
    ("Std", Rolling::Std),
    ("Var", Rolling::Var),
    ("Max", Rolling::Max),
    ("Min", Rolling::Min),
    ("Med", Rolling::Med),
    ("Mad", Rolling::Mad),
    ("Count", Rolling::Count),
    ("Skew", Rolling::Skew),
    ("Kurt", Rolling::Kurt),
    ("Rank", Rolling::Rank),
    ("IdxMax", Rolling::IdxMax),
    ("IdxMin", Rolling::IdxMin),
    ("WMA", Rolling::Wma),
    ("EMA", Rolling::Ema),
    ("Delta", Rolling::Delta),
    ("Slope", Rolling::Slope),
    ("Rsquare", Rolling::Rsquare),
    ("Resi", Rolling::Resi),
];

const BINARY: [(&str, Binary); 15] = [
    ("Add", Binary::Add),
    ("Sub", Binary::Sub),
    ("Mul", Binary::Mul),
    ("Div", Binary::Div),
    ("Power", Binary::Power),
    ("Greater", Binary::Greater),
    ("Less", Binary::Less),
    ("Gt", Binary::Gt),
    ("Ge", Binary::Ge),
    ("Lt", Binary::Lt),
    ("Le", Binary::Le),
    ("Eq", Binary::Eq),
    ("Ne", Binary::Ne),
    ("And", Binary::And),
    ("Or", Binary::Or),
];

const UNARIES: [(&str, Unary); 5] = [
    ("Abs", Unary::Abs),
    ("Log", Unary::Log),
    ("Sign", Unary::Sign),
    ("Not", Unary::Not),
    // The canonical name of unary minus, so canonical text parses back.
    ("Neg", Unary::Neg),
];

impl Lower<'_> {
    fn err(&self, pos: usize, reason: String) -> Error {
        Error::Expr {
            expr: self.text.to_owned(),
            pos,
            reason,
        }
    }

    fn expr(&self, node: (Node, usize)) -> Result<Expr> {
        stacker::maybe_grow(
            crate::expr::STACK_RED_ZONE,
            crate::expr::STACK_SEGMENT,
            || self.lower(node),
        )
    }

    fn lower(&self, (node, pos): (Node, usize)) -> Result<Expr> {
        Ok(match node {
            Node::Num(v, _) => Expr::Const(v),
            Node::Str(s) => {
                return Err(self.err(
                    pos,
                    format!(
                        "string '{s}' is only allowed as the instrument of Mask or ChangeInstrument"
                    ),
                ));
            }
            Node::Field(f) => {
                let name = f.to_lowercase();
                crate::store::layout::validate_name(NameKind::Field, &name)
                    .map_err(|e| self.err(pos, e.to_string()))?;
                Expr::Field(name)
            }
            Node::Neg(x) => Expr::Unary(Unary::Neg, Box::new(self.expr(*x)?)),
            Node::Bin(op, a, b) => {
                Expr::Binary(op, Box::new(self.expr(*a)?), Box::new(self.expr(*b)?))
            }
            Node::Chain(first, rest) => Expr::Chain(
                Box::new(self.expr(*first)?),
                rest.into_iter()
                    .map(|(op, x)| Ok((op, self.expr(x)?)))
                    .collect::<Result<_>>()?,
            ),
            Node::Call(name, args) => self.call(&name, pos, args)?,
        })
    }

    fn arity(
        &self,
        name: &str,
        pos: usize,
        args: &[(Node, usize)],
        want: usize,
        sig: &str,
    ) -> Result<()> {
        if args.len() == want {
            Ok(())
        } else {
            Err(self.err(
                pos,
                format!(
                    "{name} takes {want} argument{} ({sig}), got {}",
                    if want == 1 { "" } else { "s" },
                    args.len()
                ),
            ))
        }
    }

    /// A window literal: whole number >= 0 (0 = expanding), or a fraction in (0, 1) (exponential weights).
    fn window(&self, name: &str, (node, pos): &(Node, usize)) -> Result<Window> {
        match node {
            Node::Num(v, true) if *v >= 1.0 && *v <= u32::MAX as f64 => Ok(Window::Periods(*v as u32)),
            Node::Num(v, true) if *v == 0.0 => Ok(Window::Expanding),
            Node::Num(v, true) => Err(self.err(
                *pos,
                format!(
                    "the window of {name} is {v} rows, more than the {} a window may have; use 0 for every row so far",
                    u32::MAX
                ),
            )),
            Node::Num(v, false) if *v > 0.0 && *v < 1.0 => Ok(Window::Ewm(*v)),
            Node::Num(v, false) => Err(self.err(
                *pos,
                format!("the window of {name} is {v}: write a whole number (rows) or a fraction between 0 and 1 (exponential weights)"),
            )),
            Node::Neg(_) => Err(self.err(*pos, format!("the window of {name} cannot be negative"))),
            _ => Err(self.err(*pos, format!("the window of {name} must be a number, such as {name}($close, 5)"))),
        }
    }

    fn call(&self, name: &str, pos: usize, mut args: Vec<(Node, usize)>) -> Result<Expr> {
        if let Some(&(_, op)) = UNARIES.iter().find(|(n, _)| *n == name) {
            self.arity(name, pos, &args, 1, "x")?;
            return Ok(Expr::Unary(op, Box::new(self.expr(args.remove(0))?)));
        }
        if let Some(&(_, op)) = BINARY.iter().find(|(n, _)| *n == name) {
            self.arity(name, pos, &args, 2, "a, b")?;
            let b = self.expr(args.pop().expect("two"))?;
            let a = self.expr(args.pop().expect("two"))?;
            return Ok(Expr::Binary(op, Box::new(a), Box::new(b)));
        }
        if let Some(&(_, op)) = ROLLING.iter().find(|(n, _)| *n == name) {
            self.arity(name, pos, &args, 2, "x, N")?;
            let w = self.window(name, &args[1])?;
            let wpos = args[1].1;
            match (op, w) {
                (Rolling::Mean | Rolling::Ema, _) => {}
                (_, Window::Ewm(a)) => {
                    return Err(self.err(
                        wpos,
                        format!("{name} with a fractional window ({a}) would be an exponential mean in qlib, not {name}; use EMA($x, {a}) for that, or a whole number of rows"),
                    ));
                }
                (Rolling::Skew, Window::Periods(n)) if n < 3 => {
                    return Err(self.err(
                        wpos,
                        format!("Skew needs a window of at least 3 rows, got {n}"),
                    ));
                }
                (Rolling::Kurt, Window::Periods(n)) if n < 4 => {
                    return Err(self.err(
                        wpos,
                        format!("Kurt needs a window of at least 4 rows, got {n}"),
                    ));
                }
                _ => {}
            }
            return Ok(Expr::Rolling(op, Box::new(self.expr(args.remove(0))?), w));
        }
        match name {
            "If" => {
                self.arity(name, pos, &args, 3, "condition, then, else")?;
                let mut it = args.into_iter();
                let (c, a, b) = (
                    it.next().expect("3"),
                    it.next().expect("3"),
                    it.next().expect("3"),
                );
                Ok(Expr::If(
                    Box::new(self.expr(c)?),
                    Box::new(self.expr(a)?),
                    Box::new(self.expr(b)?),
                ))
            }
            "Ref" => {
                self.arity(name, pos, &args, 2, "x, N")?;
                let n = match &args[1].0 {
                    Node::Num(v, true) if *v <= i32::MAX as f64 => *v as i32,
                    Node::Neg(inner) if matches!(inner.0, Node::Num(v, true) if v <= i32::MAX as f64) =>
                    {
                        let Node::Num(v, _) = inner.0 else {
                            unreachable!("matched above")
                        };
                        -(v as i32)
                    }
                    Node::Num(v, true) => {
                        return Err(self.err(
                            args[1].1,
                            format!(
                                "the offset of Ref is {v} rows, more than the {} it may have",
                                i32::MAX
                            ),
                        ));
                    }
                    _ => {
                        return Err(self.err(
                            args[1].1,
                            "the offset of Ref must be a whole number (rows back; negative: ahead)"
                                .into(),
                        ));
                    }
                };
                Ok(Expr::Ref(Box::new(self.expr(args.remove(0))?), n))
            }
            "Quantile" => {
                self.arity(name, pos, &args, 3, "x, N, q")?;
                let w = self.window(name, &args[1])?;
                if let Window::Ewm(_) = w {
                    return Err(self.err(args[1].1, "Quantile needs a whole number of rows".into()));
                }
                let q = match args[2].0 {
                    Node::Num(q, _) if (0.0..=1.0).contains(&q) => q,
                    _ => {
                        return Err(self.err(
                            args[2].1,
                            "the quantile q of Quantile must be a number from 0 to 1".into(),
                        ));
                    }
                };
                Ok(Expr::Quantile(Box::new(self.expr(args.remove(0))?), w, q))
            }
            "Corr" | "Cov" => {
                self.arity(name, pos, &args, 3, "a, b, N")?;
                let w = match self.window(name, &args[2])? {
                    w @ Window::Periods(_) => w,
                    _ => {
                        return Err(self.err(
                            args[2].1,
                            format!("{name} needs a whole number of rows, at least 1"),
                        ));
                    }
                };
                let op = if name == "Corr" {
                    Pair::Corr
                } else {
                    Pair::Cov
                };
                let mut it = args.into_iter();
                let (a, b) = (it.next().expect("3"), it.next().expect("3"));
                Ok(Expr::Pair(
                    op,
                    Box::new(self.expr(a)?),
                    Box::new(self.expr(b)?),
                    w,
                ))
            }
            "Mask" | "ChangeInstrument" => {
                self.arity(
                    name,
                    pos,
                    &args,
                    2,
                    if name == "Mask" {
                        "x, 'instrument'"
                    } else {
                        "'instrument', x"
                    },
                )?;
                let (x, inst) = if name == "Mask" { (0, 1) } else { (1, 0) };
                let Node::Str(instrument) = args[inst].0.clone() else {
                    return Err(self.err(
                        args[inst].1,
                        format!(
                            "the instrument of {name} must be a quoted string, such as 'SH000300'"
                        ),
                    ));
                };
                crate::store::layout::validate_name(NameKind::Instrument, &instrument)
                    .map_err(|e| self.err(args[inst].1, e.to_string()))?;
                Ok(Expr::Instrument(
                    Box::new(self.expr(args.swap_remove(x))?),
                    instrument.to_uppercase(),
                ))
            }
            _ => Err(self.err(
                pos,
                format!("unknown operator {name}; operators are {}", known()),
            )),
        }
    }
}

fn known() -> String {
    let mut names: Vec<&str> = UNARIES
        .iter()
        .map(|x| x.0)
        .chain(BINARY.iter().map(|x| x.0))
        .chain(ROLLING.iter().map(|x| x.0))
        .chain([
            "If",
            "Ref",
            "Quantile",
            "Corr",
            "Cov",
            "Mask",
            "ChangeInstrument",
        ])
        .collect();
    names.sort_unstable();
    names.join(", ")
}
