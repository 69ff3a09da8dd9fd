//! Graphviz dump of the kernel IR (`attnc compile --emit dot`): one cluster per region.

use std::fmt::Write;

use petgraph::visit::{EdgeRef, IntoEdgeReferences};

use super::print::type_text;
use super::*;

pub fn dot(k: &Kernel) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "digraph \"{}\" {{", k.info.name.replace('"', ""));
    let _ = writeln!(
        o,
        "  node [shape=box, fontname=\"monospace\", fontsize=10];"
    );
    cluster(k, RegionId(0), &mut o, 1);
    for e in k.graph.edge_references() {
        let w = e.weight();
        let label = if w.result == 0 {
            format!("{}", w.operand)
        } else {
            format!("#{}->{}", w.result, w.operand)
        };
        let _ = writeln!(
            o,
            "  n{} -> n{} [label=\"{label}\", fontsize=8];",
            e.source().index(),
            e.target().index()
        );
    }
    o.push_str("}\n");
    o
}

fn cluster(k: &Kernel, r: RegionId, o: &mut String, depth: usize) {
    let pad = "  ".repeat(depth);
    for n in k.region_nodes(r) {
        let node = k.node(n);
        let tys: Vec<String> = node.results.iter().map(type_text).collect();
        let _ = writeln!(
            o,
            "{pad}n{} [label=\"%{} {}\\n{}\"];",
            n.index(),
            n.index(),
            node.op.name(),
            tys.join(", ")
        );
        if let Op::KvLoop { region: body, .. } = node.op {
            let _ = writeln!(o, "{pad}subgraph cluster_r{} {{", body.0);
            let _ = writeln!(
                o,
                "{pad}  label=\"kv_loop body (region {})\"; style=dashed;",
                body.0
            );
            cluster(k, body, o, depth + 1);
            let _ = writeln!(o, "{pad}}}");
        }
    }
}
