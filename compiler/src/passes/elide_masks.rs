//! `elide-masks`: drops the mask when the schedule has no partial key tile (every visited
//! tile is fully active, so the kernel never needs the element rule).

use super::Pass;
use crate::ir::{value, Kernel, Op};

pub struct ElideMasks;

impl Pass for ElideMasks {
    fn name(&self) -> &'static str {
        "elide-masks"
    }

    fn summary(&self) -> &'static str {
        "remove masks when no key tile is partial"
    }

    fn run(&self, k: &mut Kernel) -> usize {
        if k.info.partial_tiles > 0 {
            return 0;
        }
        let masks: Vec<_> = k
            .graph
            .node_indices()
            .filter(|n| matches!(k.node(*n).op, Op::Mask(_)))
            .collect();
        for m in &masks {
            let input = k.operands(*m)[0];
            k.replace_uses(value(*m, 0), input);
            k.graph.remove_node(*m);
        }
        masks.len()
    }
}
