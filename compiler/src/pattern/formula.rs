//! A mask rule as a boolean formula over atoms. An atom is a comparison (or any other
//! non-logical boolean) and is tagged with its unit (tiles or tokens) and the canvas axes
//! it reads. Atoms that read one axis are analysed per axis; the rest are "joint".

use crate::diagnostic::Span;
use crate::sema::eval::{self, Env, EvalError, Value};
use crate::sema::expr::{BinOp, Expr, Kind, UnOp, Var};

use super::geometry::MAX_RANK;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Unit {
    Tiles,
    Tokens,
}

#[derive(Clone, Debug)]
pub struct Atom {
    pub expr: Expr,
    pub unit: Unit,
    /// Bit `a` set when the atom reads axis `a`.
    pub axes: u8,
}

impl Atom {
    /// The single axis the atom reads, if exactly one.
    pub fn single_axis(&self) -> Option<usize> {
        (self.axes.count_ones() == 1).then(|| self.axes.trailing_zeros() as usize)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Tree {
    Const(bool),
    Atom(u32),
    Not(Box<Tree>),
    And(Vec<Tree>),
    Or(Vec<Tree>),
}

#[derive(Clone, Debug)]
pub struct Formula {
    pub tree: Tree,
    pub atoms: Vec<Atom>,
}

impl Formula {
    /// `tiles && tokens`; a missing rule is `true`.
    pub fn new(tiles: Option<&Expr>, tokens: Option<&Expr>, rank: usize) -> Formula {
        let mut atoms = vec![];
        let mut parts = vec![];
        if let Some(e) = tiles {
            parts.push(build(e, Unit::Tiles, rank, &mut atoms));
        }
        if let Some(e) = tokens {
            parts.push(build(e, Unit::Tokens, rank, &mut atoms));
        }
        let mut flat = vec![];
        for p in parts {
            match p {
                Tree::And(inner) => flat.extend(inner),
                t => flat.push(t),
            }
        }
        let tree = match flat.len() {
            0 => Tree::Const(true),
            1 => flat.pop().unwrap_or(Tree::Const(true)),
            _ => Tree::And(flat),
        };
        Formula { tree, atoms }
    }

    /// Atoms that are direct conjuncts of the whole rule: when one is false, so is the rule.
    pub fn top_conjuncts(&self) -> Vec<u32> {
        match &self.tree {
            Tree::Atom(i) => vec![*i],
            Tree::And(v) => v
                .iter()
                .filter_map(|t| {
                    if let Tree::Atom(i) = t {
                        Some(*i)
                    } else {
                        None
                    }
                })
                .collect(),
            _ => vec![],
        }
    }

    /// Evaluates the tree with atom values given by `atom`.
    pub fn eval(&self, atom: &mut dyn FnMut(u32) -> bool) -> bool {
        eval_tree(&self.tree, atom)
    }

    /// Kleene evaluation: `None` = unknown.
    pub fn eval3(&self, atom: &mut dyn FnMut(u32) -> Option<bool>) -> Option<bool> {
        eval3(&self.tree, atom)
    }
}

fn build(e: &Expr, unit: Unit, rank: usize, atoms: &mut Vec<Atom>) -> Tree {
    match &e.kind {
        Kind::Bool(b) => Tree::Const(*b),
        Kind::Unary(UnOp::Not, a) => Tree::Not(Box::new(build(a, unit, rank, atoms))),
        Kind::Binary(BinOp::And, a, b) => {
            let mut v = vec![];
            for x in [a, b] {
                match build(x, unit, rank, atoms) {
                    Tree::And(inner) => v.extend(inner),
                    t => v.push(t),
                }
            }
            Tree::And(v)
        }
        Kind::Binary(BinOp::Or, a, b) => {
            let mut v = vec![];
            for x in [a, b] {
                match build(x, unit, rank, atoms) {
                    Tree::Or(inner) => v.extend(inner),
                    t => v.push(t),
                }
            }
            Tree::Or(v)
        }
        _ => {
            atoms.push(Atom {
                expr: e.clone(),
                unit,
                axes: axes_of(e, rank),
            });
            Tree::Atom(atoms.len() as u32 - 1)
        }
    }
}

/// Axes an expression reads through coordinates (extents `n*` are constants).
pub fn axes_of(e: &Expr, rank: usize) -> u8 {
    let mut m = 0u8;
    let all = ((1u16 << rank) - 1) as u8;
    e.walk(&mut |x| {
        if let Kind::Var(v) = x.kind {
            match v {
                Var::Q(a) | Var::K(a) | Var::D(a) => m |= 1 << a,
                Var::QI | Var::KI => m |= all,
                _ => {}
            }
        }
    });
    m
}

fn eval_tree(t: &Tree, atom: &mut dyn FnMut(u32) -> bool) -> bool {
    match t {
        Tree::Const(b) => *b,
        Tree::Atom(i) => atom(*i),
        Tree::Not(a) => !eval_tree(a, atom),
        Tree::And(v) => v.iter().all(|x| eval_tree(x, atom)),
        Tree::Or(v) => v.iter().any(|x| eval_tree(x, atom)),
    }
}

fn eval3(t: &Tree, atom: &mut dyn FnMut(u32) -> Option<bool>) -> Option<bool> {
    match t {
        Tree::Const(b) => Some(*b),
        Tree::Atom(i) => atom(*i),
        Tree::Not(a) => eval3(a, atom).map(|b| !b),
        Tree::And(v) => {
            let mut unknown = false;
            for x in v {
                match eval3(x, atom) {
                    Some(false) => return Some(false),
                    None => unknown = true,
                    Some(true) => {}
                }
            }
            if unknown {
                None
            } else {
                Some(true)
            }
        }
        Tree::Or(v) => {
            let mut unknown = false;
            for x in v {
                match eval3(x, atom) {
                    Some(true) => return Some(true),
                    None => unknown = true,
                    Some(false) => {}
                }
            }
            if unknown {
                None
            } else {
                Some(false)
            }
        }
    }
}

/// A point of the pair space: coordinates in the unit of the rule being evaluated.
#[derive(Clone, Copy, Debug, Default)]
pub struct Point {
    pub q: [i64; MAX_RANK],
    pub k: [i64; MAX_RANK],
    pub n: [i64; MAX_RANK],
    pub qi: i64,
    pub ki: i64,
}

impl Env for Point {
    fn var(&self, v: Var, span: Span) -> Result<Value, EvalError> {
        let a = |x: u8| x as usize % MAX_RANK;
        Ok(Value::Int(match v {
            Var::Q(x) => self.q[a(x)],
            Var::K(x) => self.k[a(x)],
            Var::D(x) => self.k[a(x)] - self.q[a(x)],
            Var::N(x) => self.n[a(x)],
            Var::QI => self.qi,
            Var::KI => self.ki,
            _ => {
                return Err(EvalError {
                    span,
                    message: "this variable is not defined in a mask".into(),
                })
            }
        }))
    }
}

impl Point {
    /// Fills the linear (raster) indices from the coordinates.
    pub fn with_linear(mut self, rank: usize) -> Point {
        let (mut qi, mut ki) = (0i64, 0i64);
        for a in 0..rank {
            qi = qi * self.n[a] + self.q[a];
            ki = ki * self.n[a] + self.k[a];
        }
        self.qi = qi;
        self.ki = ki;
        self
    }
}

/// Evaluates a boolean atom at a point.
pub fn eval_bool(e: &Expr, p: &Point) -> Result<bool, EvalError> {
    Ok(eval::eval(e, p)?.as_bool())
}
