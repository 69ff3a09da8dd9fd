//! `fold-log2e`: switches the online softmax to exp2 by scaling scores with log2(e). With
//! no score modifier the factor folds into the existing `scale` node (one multiply per
//! score, as FlashAttention does); otherwise a scale is inserted after the modifier, since
//! the modifier sees natural-unit scores. A `log_sum_exp` of the loop's running max and
//! sum follows its softmax into base 2 (it then converts back to natural log).

use petgraph::visit::EdgeRef;

use super::Pass;
use crate::ir::{value, Kernel, Op};

pub struct FoldLog2e;

impl Pass for FoldLog2e {
    fn name(&self) -> &'static str {
        "fold-log2e"
    }

    fn summary(&self) -> &'static str {
        "exp2 softmax with log2(e) folded into the score scale"
    }

    fn run(&self, k: &mut Kernel) -> usize {
        let updates: Vec<_> = k
            .graph
            .node_indices()
            .filter(|n| k.node(*n).op == Op::SoftmaxUpdate { exp2: false })
            .collect();
        let mut changes = 0;
        for u in updates {
            let scores = k.operands(u)[0];
            // Walk up through masks to the producer of the scores.
            let mut src = scores;
            while let Op::Mask(_) = k.node(src.node).op {
                src = k.operands(src.node)[0];
            }
            let region = k.node(u).region;
            match k.node(src.node).op.clone() {
                // Scores only flow to scale-invariant consumers: fold into the scale.
                Op::Scale(c)
                    if k.users(src.node).iter().all(|u| {
                        matches!(
                            k.node(*u).op,
                            Op::RowMax | Op::SoftmaxUpdate { .. } | Op::Mask(_)
                        )
                    }) =>
                {
                    k.graph[src.node].op = Op::Scale(c * std::f64::consts::LOG2_E);
                }
                _ => {
                    // Insert `scale log2(e)` between the scores and everything that reads them.
                    let ty = k.node(src.node).results[src.result as usize];
                    let users = k.users(src.node);
                    let s = k.add(
                        Op::Scale(std::f64::consts::LOG2_E),
                        vec![ty],
                        region,
                        &[src],
                    );
                    for user in users {
                        // Re-point every edge from src to the new scale node.
                        let edges: Vec<_> = k
                            .graph
                            .edges_connecting(src.node, user)
                            .filter(|e| e.weight().result == src.result)
                            .map(|e| (e.id(), e.weight().operand))
                            .collect();
                        for (id, operand) in edges {
                            k.graph.remove_edge(id);
                            k.graph
                                .add_edge(s, user, crate::ir::Edge { result: 0, operand });
                        }
                    }
                    let _ = value(s, 0);
                }
            }
            k.graph[u].op = Op::SoftmaxUpdate { exp2: true };
            changes += 1;
        }
        changes + base2_log_sum_exps(k)
    }
}

/// Marks base 2 the `log_sum_exp`s whose running max comes from a base-2 softmax update;
/// returns how many.
fn base2_log_sum_exps(k: &mut Kernel) -> usize {
    let lses: Vec<_> = k
        .graph
        .node_indices()
        .filter(|n| k.node(*n).op == Op::LogSumExp { exp2: false })
        .filter(|n| {
            k.operands(*n)
                .first()
                .is_some_and(|m| k.yielded_by(*m) == Some(&Op::SoftmaxUpdate { exp2: true }))
        })
        .collect();
    for n in &lses {
        k.graph[*n].op = Op::LogSumExp { exp2: true };
    }
    lses.len()
}
