//! `attnc explain`: density, FLOPs, key tiles per query tile, an ASCII view of one query
//! tile's key tiles, and a PNG of the tile mask.

use std::fmt::Write;
use std::io::BufWriter;
use std::path::Path;

use crate::pattern::geometry::{Geometry, TileRef, MAX_RANK};
use crate::pattern::print::tile_name;
use crate::pattern::{Schedule, TileClass, VariantSchedule};
use crate::sema::spec::{ranges, Spec};

/// Largest side of the PNG; bigger masks are reduced (a pixel shows its block's densest class).
pub const MAX_PNG_SIDE: u32 = 4096;

/// Counts the report is made of.
#[derive(Clone, Debug, PartialEq)]
pub struct Figures {
    pub density: f64,
    pub active_pairs: u64,
    pub total_pairs: u128,
    /// Tile pairs visited, per head, summed over heads.
    pub tile_pairs: u64,
    /// 2 * active pairs * (head_dim + value_dim) * heads * batch: the useful work.
    pub flops: f64,
    /// The same with every visited tile pair counted whole (what a kernel executes).
    pub tile_flops: f64,
    /// Dense attention over the whole sequence.
    pub dense_flops: f64,
}

pub fn figures(spec: &Spec, s: &Schedule) -> Figures {
    let g = &s.geom;
    let per_pair = 2.0 * f64::from(spec.head_dim + spec.value_dim) * f64::from(spec.batch);
    let active: f64 = s
        .variants
        .iter()
        .map(|v| v.stats.active_pairs as f64 * v.heads.len() as f64)
        .sum();
    let tile_pairs = s.active_tile_pairs();
    let tt = f64::from(g.tile_tokens);
    Figures {
        density: s.density(),
        active_pairs: s
            .variants
            .iter()
            .map(|v| v.stats.active_pairs * v.heads.len() as u64)
            .sum(),
        total_pairs: u128::from(g.total_tokens)
            * u128::from(g.total_tokens)
            * u128::from(spec.heads),
        tile_pairs,
        flops: per_pair * active,
        tile_flops: per_pair * tile_pairs as f64 * tt * tt,
        dense_flops: per_pair * (g.total_tokens as f64).powi(2) * f64::from(spec.heads),
    }
}

fn si(x: f64) -> String {
    let units = [(1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")];
    for (f, u) in units {
        if x >= f {
            return format!("{:.3} {u}", x / f);
        }
    }
    format!("{x:.0} ")
}

/// The default query tile to draw: the canvas tile at the centre of the grid.
pub fn centre_tile(g: &Geometry) -> u32 {
    let mut c = [0u32; MAX_RANK];
    for a in 0..g.rank {
        c[a] = g.grid[a] / 2;
    }
    g.canvas_tile_id(&c)
}

pub fn report(spec: &Spec, s: &Schedule, file: &str, query_tile: Option<u32>) -> String {
    let g = &s.geom;
    let f = figures(spec, s);
    let axes = spec.layout.axes();
    let mut o = String::new();
    let dims = |v: &[u32]| {
        v[..g.rank]
            .iter()
            .map(|x| x.to_string())
            .collect::<Vec<_>>()
            .join(" x ")
    };
    let _ = writeln!(
        o,
        "kernel {} ({file}): attention({}) on {}",
        spec.kernel, spec.pattern, spec.layout_name
    );
    let _ = writeln!(
        o,
        "  canvas {} = {} ({} tokens), tile {} ({} tokens), grid {} = {} tiles",
        axes.join(" x "),
        dims(&g.canvas),
        g.canvas_tokens,
        dims(&g.tile),
        g.tile_tokens,
        dims(&g.grid),
        g.canvas_tiles
    );
    let mut seq = format!(
        "  sequence {} tokens in {} tiles",
        g.total_tokens, g.total_tiles
    );
    for sg in &g.segments {
        let _ = write!(
            seq,
            "; {} {:?} {} ({} valid)",
            sg.name, sg.placement, sg.size, sg.valid
        );
    }
    let _ = writeln!(
        o,
        "{}",
        seq.replace("Prefix", "prefix").replace("Suffix", "suffix")
    );
    let _ = writeln!(
        o,
        "  heads {} (kv {}), head_dim {}, value_dim {}, batch {}, {}{}",
        spec.heads,
        spec.kv_heads,
        spec.head_dim,
        spec.value_dim,
        spec.batch,
        spec.dtype.name(),
        if spec.outputs.lse.is_some() {
            "; also writes each row's log-sum-exp (outputs lse, f32)"
        } else {
            ""
        }
    );
    let _ = writeln!(
        o,
        "density {:.4} ({} of {} token pairs over all heads); ideal speedup over dense {:.1}x",
        f.density,
        f.active_pairs,
        f.total_pairs,
        if f.density > 0.0 {
            1.0 / f.density
        } else {
            0.0
        }
    );
    let _ = writeln!(
        o,
        "FLOPs {}FLOP useful, {}FLOP in visited tiles, {}FLOP dense",
        si(f.flops),
        si(f.tile_flops),
        si(f.dense_flops)
    );
    for (i, v) in s.variants.iter().enumerate() {
        let heads = if s.variants.len() == 1 {
            "all heads".to_string()
        } else {
            format!("heads {}", ranges(&v.heads))
        };
        let st = &v.stats;
        let visited = st.full_tiles + st.partial_tiles;
        let _ = writeln!(o, "mask {i} ({heads}):");
        let _ = writeln!(
            o,
            "  tile pairs {} of {} active ({} full, {} partial); key tiles per query tile: min {}, mean {:.2}, max {}",
            visited,
            u64::from(g.total_tiles) * u64::from(g.total_tiles),
            st.full_tiles,
            st.partial_tiles,
            st.min_kv_tiles,
            visited as f64 / f64::from(g.total_tiles.max(1)),
            st.max_kv_tiles
        );
        match &v.closed {
            Some(c) if c.boxes.len() == 1 && c.boxes[0] == Default::default() => {
                let _ = writeln!(o, "  canvas key tiles in closed form: all");
            }
            Some(c) => {
                let _ = writeln!(o, "  canvas key tiles in closed form:");
                o.push_str(&c.print(axes, &g.grid));
            }
            None => {
                let _ = writeln!(o, "  canvas key tiles from a table ({} runs)", v.runs.len());
            }
        }
        let qt = query_tile
            .filter(|q| *q < g.total_tiles)
            .unwrap_or_else(|| centre_tile(g));
        o.push_str(&ascii_view(g, v, qt));
    }
    o
}

/// The key tiles of one query tile, drawn on the canvas grid: `Q` the query tile (if it
/// attends to itself it is still `Q`), `#` full, `+` partial, `.` not visited.
pub fn ascii_view(g: &Geometry, v: &VariantSchedule, q: u32) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "  key tiles of query tile {q} ({}): Q query, # full, + partial, . skipped",
        tile_name(g, q)
    );
    let qc = match g.tile_ref(q) {
        TileRef::Canvas { coords } => Some(coords),
        TileRef::Segment { .. } => None,
    };
    let cell = |c: &[u32; MAX_RANK]| -> char {
        if Some(*c) == qc {
            return 'Q';
        }
        match v.class_of(q, g.canvas_tile_id(c)) {
            Some(TileClass::Full) => '#',
            Some(TileClass::Partial) => '+',
            None => '.',
        }
    };
    const MAX_SIDE: u32 = 64;
    let window = |a: usize| -> (u32, u32) {
        let n = g.grid[a];
        if n <= MAX_SIDE {
            return (0, n);
        }
        let centre = qc.map(|c| c[a]).unwrap_or(n / 2);
        let lo = centre.saturating_sub(MAX_SIDE / 2).min(n - MAX_SIDE);
        (lo, lo + MAX_SIDE)
    };
    let rank = g.rank;
    let (wl, wh) = window(rank - 1);
    let row = |c: &mut [u32; MAX_RANK]| -> String {
        let mut s = String::new();
        for w in wl..wh {
            c[rank - 1] = w;
            s.push(cell(c));
        }
        s
    };
    match rank {
        1 => {
            let mut c = [0u32; MAX_RANK];
            let _ = writeln!(o, "    {}", row(&mut c));
        }
        2 => {
            let (hl, hh) = window(0);
            for h in hl..hh {
                let mut c = [h, 0, 0];
                let _ = writeln!(o, "    {}", row(&mut c));
            }
        }
        _ => {
            // One slice per t near the query tile, side by side.
            let qt = qc.map(|c| c[0]).unwrap_or(g.grid[0] / 2);
            let ts: Vec<u32> = (qt.saturating_sub(2)..(qt + 3).min(g.grid[0])).collect();
            let header: Vec<String> = ts
                .iter()
                .map(|t| format!("{:<width$}", format!("t={t}"), width = (wh - wl) as usize))
                .collect();
            let _ = writeln!(o, "    {}", header.join("  "));
            let (hl, hh) = window(1);
            for h in hl..hh {
                let parts: Vec<String> = ts.iter().map(|t| row(&mut [*t, h, 0])).collect();
                let _ = writeln!(o, "    {}", parts.join("  "));
            }
        }
    }
    let seg_tiles: Vec<String> = g
        .segments
        .iter()
        .filter(|sg| sg.tiles > 0)
        .map(|sg| {
            let seen = (sg.first_tile..sg.first_tile + sg.tiles)
                .filter(|k| v.class_of(q, *k).is_some())
                .count();
            format!("{} {seen}/{}", sg.name, sg.tiles)
        })
        .collect();
    if !seg_tiles.is_empty() {
        let _ = writeln!(o, "    segment tiles seen: {}", seg_tiles.join(", "));
    }
    o
}

/// Writes the tile mask (query tiles down, key tiles across) of one head variant.
pub fn write_png(s: &Schedule, variant: usize, path: &Path) -> Result<(), String> {
    let g = &s.geom;
    let v = s
        .variants
        .get(variant)
        .ok_or_else(|| format!("no mask {variant}"))?;
    let n = g.total_tiles.max(1);
    let step = n.div_ceil(MAX_PNG_SIDE);
    let side = n.div_ceil(step);
    // 0 empty, 1 partial, 2 full; a reduced pixel keeps the densest class of its block.
    let mut cls = vec![0u8; side as usize * side as usize];
    for q in 0..g.total_tiles {
        let y = (q / step) as usize;
        for r in v.row(q) {
            let c = match r.class {
                TileClass::Full => 2,
                TileClass::Partial => 1,
            };
            for k in r.start..r.start + r.len {
                let idx = y * side as usize + (k / step) as usize;
                if cls[idx] < c {
                    cls[idx] = c;
                }
            }
        }
    }
    let mut rgb = Vec::with_capacity(cls.len() * 3);
    for c in cls {
        rgb.extend_from_slice(match c {
            2 => &[31u8, 78, 121],
            1 => &[230u8, 145, 56],
            _ => &[255u8, 255, 255],
        });
    }
    let file = std::fs::File::create(path)
        .map_err(|e| format!("cannot create `{}`: {e}", path.display()))?;
    let mut enc = png::Encoder::new(BufWriter::new(file), side, side);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut w = enc
        .write_header()
        .map_err(|e| format!("cannot write `{}`: {e}", path.display()))?;
    w.write_image_data(&rgb)
        .map_err(|e| format!("cannot write `{}`: {e}", path.display()))?;
    Ok(())
}
