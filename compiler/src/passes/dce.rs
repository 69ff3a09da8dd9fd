//! `dce`: removes nodes whose results nobody uses and that have no effect, to a fixed point.

use super::Pass;
use crate::ir::{Kernel, Op};

pub struct Dce;

impl Pass for Dce {
    fn name(&self) -> &'static str {
        "dce"
    }

    fn summary(&self) -> &'static str {
        "remove unused nodes without effects"
    }

    fn run(&self, k: &mut Kernel) -> usize {
        let mut removed = 0;
        loop {
            let dead: Vec<_> = k
                .graph
                .node_indices()
                .filter(|n| {
                    let op = &k.node(*n).op;
                    // A loop stays while its body has effects (it always yields).
                    !op.has_effect() && !matches!(op, Op::KvLoop { .. }) && k.users(*n).is_empty()
                })
                .collect();
            if dead.is_empty() {
                return removed;
            }
            for n in dead {
                k.graph.remove_node(n);
                removed += 1;
            }
        }
    }
}
