//! Text form of a schedule (`attnc compile --emit schedule`).

use std::fmt::Write;

use super::geometry::{Geometry, TileRef};
use super::schedule::{KvRun, Schedule};
use super::TileClass;
use crate::sema::spec::{ranges, Spec};

pub fn tile_name(g: &Geometry, t: u32) -> String {
    match g.tile_ref(t) {
        TileRef::Segment { seg, index } => format!("{} {index}", g.segments[seg].name),
        TileRef::Canvas { coords } => {
            let axes = crate::sema::expr::axis_names(g.rank);
            let c: Vec<String> = (0..g.rank)
                .map(|a| format!("{}={}", axes[a], coords[a]))
                .collect();
            c.join(",")
        }
    }
}

pub fn runs_text(runs: &[KvRun]) -> String {
    let r: Vec<String> = runs
        .iter()
        .map(|r| {
            let c = match r.class {
                TileClass::Full => "F",
                TileClass::Partial => "P",
            };
            if r.len == 1 {
                format!("{} {c}", r.start)
            } else {
                format!("{}-{} {c}", r.start, r.start + r.len - 1)
            }
        })
        .collect();
    if r.is_empty() {
        "(none)".into()
    } else {
        r.join(", ")
    }
}

/// Header, closed forms, statistics, then one line per query tile (up to `max_rows`).
pub fn print_schedule(spec: &Spec, s: &Schedule, max_rows: Option<usize>) -> String {
    let g = &s.geom;
    let mut o = String::new();
    let axes = crate::sema::expr::axis_names(g.rank);
    let grid: Vec<String> = (0..g.rank).map(|a| g.grid[a].to_string()).collect();
    let _ = writeln!(
        o,
        "schedule {}: {} tiles of {} tokens ({} canvas tiles, grid {} over {}; tiles {}..{} are the canvas)",
        spec.kernel,
        g.total_tiles,
        g.tile_tokens,
        g.canvas_tiles,
        grid.join("x"),
        axes.join("x"),
        g.canvas_first_tile,
        g.canvas_first_tile + g.canvas_tiles
    );
    for sg in &g.segments {
        let _ = writeln!(
            o,
            "segment {}: tiles {}..{} ({} tokens, {} valid)",
            sg.name,
            sg.first_tile,
            sg.first_tile + sg.tiles,
            sg.size,
            sg.valid
        );
    }
    let total = (g.total_tokens as f64).powi(2);
    for (i, v) in s.variants.iter().enumerate() {
        let heads = if s.variants.len() == 1 {
            "all heads".to_string()
        } else {
            format!("heads {}", ranges(&v.heads))
        };
        let _ = writeln!(o, "mask {i} ({heads}):");
        match &v.closed {
            Some(c) if c.boxes.len() == 1 && c.boxes[0] == Default::default() => {
                let _ = writeln!(o, "  canvas key tiles, closed form: every tile");
            }
            Some(c) => {
                let _ = writeln!(
                    o,
                    "  canvas key tiles, closed form: union of {} box(es)",
                    c.boxes.len()
                );
                o.push_str(&c.print(axes, &g.grid));
            }
            None => {
                let _ = writeln!(o, "  canvas key tiles: table (the rule has no closed form)");
            }
        }
        let st = &v.stats;
        let mean = (st.full_tiles + st.partial_tiles) as f64 / f64::from(g.total_tiles.max(1));
        let _ = writeln!(
            o,
            "  active pairs {} of {} (density {:.6}); tile pairs {} full, {} partial",
            st.active_pairs,
            g.total_tokens * g.total_tokens,
            st.active_pairs as f64 / total,
            st.full_tiles,
            st.partial_tiles
        );
        let _ = writeln!(
            o,
            "  key tiles per query tile: min {}, mean {:.2}, max {}; query tiles with none: {}",
            st.min_kv_tiles, mean, st.max_kv_tiles, st.empty_rows
        );
        let limit = max_rows.unwrap_or(usize::MAX);
        for q in 0..g.total_tiles {
            if q as usize >= limit {
                let _ = writeln!(
                    o,
                    "  ... {} more query tiles",
                    g.total_tiles as usize - limit
                );
                break;
            }
            let _ = writeln!(o, "  q{q} ({}): {}", tile_name(g, q), runs_text(v.row(q)));
        }
    }
    o
}
