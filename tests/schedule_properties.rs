//! Property test: for random canvases, tiles, token orders, segments, radii and rules, the
//! analysed schedule (classes, pair counts, closed forms) equals a brute-force evaluation
//! of the rule over every tile pair and every token pair.

use attnc::driver::{self, Source};
use attnc::pattern::brute::Oracle;
use attnc::pattern::geometry::TileRef;
use proptest::prelude::*;

#[derive(Clone, Debug)]
struct Case {
    canvas: Vec<u32>,
    tile: Vec<u32>,
    raster: bool,
    /// (prefix?, size, valid)
    segments: Vec<(bool, u32, u32)>,
    /// Rule templates: (unit is tokens?, template index, radius, extra)
    rules: Vec<(bool, u8, u32, u32)>,
    see: Vec<(u8, u8)>,
}

const AXES: [&[&str]; 3] = [&["x"], &["h", "w"], &["t", "h", "w"]];

fn rule_text(case: &Case, tokens: bool, template: u8, r: u32, extra: u32) -> Option<String> {
    let rank = case.canvas.len();
    let axes = AXES[rank - 1];
    let extent = |a: usize| {
        if tokens {
            case.canvas[a]
        } else {
            case.canvas[a].div_ceil(case.tile[a].min(case.canvas[a]))
        }
    };
    let a = (extra as usize) % rank;
    let name = axes[a];
    Some(match template % 12 {
        0 => axes
            .iter()
            .map(|x| format!("abs(d{x}) <= {r}"))
            .collect::<Vec<_>>()
            .join(" && "),
        1 => {
            // Clamped windows that fit.
            let parts: Vec<String> = (0..rank)
                .map(|i| {
                    let rr = r.min(extent(i).saturating_sub(1) / 2);
                    format!("window({}, {rr})", axes[i])
                })
                .collect();
            parts.join(" && ")
        }
        2 => axes
            .iter()
            .map(|x| format!("d{x} == 0"))
            .collect::<Vec<_>>()
            .join(" || "),
        3 if rank >= 2 => {
            // Lines: two of the coordinates equal (or both for 2-D).
            let mut parts = vec![];
            for i in 0..rank {
                for j in i + 1..rank {
                    parts.push(format!("(d{} == 0 && d{} == 0)", axes[i], axes[j]));
                }
            }
            parts.join(" || ")
        }
        4 => format!("abs(d{name}) <= {}", r % 2),
        5 => format!("k{name} <= q{name}"),
        6 => format!(
            "(abs(d{name}) <= {r}) || !(k{} >= {})",
            axes[rank - 1],
            extra % 4
        ),
        7 => {
            let n = extent(a);
            let d = 1 + extra % 2;
            let s = 1 + (extra / 2) % 3;
            let rr = r.min((n / d).saturating_sub(1) / 2);
            if (n / d) < 2 * rr + 1 {
                return None;
            }
            format!("window({name}, {rr}, stride: {s}, dilation: {d})")
        }
        8 => "ki <= qi".to_string(),
        9 => format!("d{name} % 2 == 0 && abs(d{}) <= {r}", axes[rank - 1]),
        10 => format!("q{name} + k{name} >= {}", extra % 5),
        _ => format!(
            "max(abs(d{}), abs(d{name})) <= {r} && k{name} != {}",
            axes[0],
            extra % 3
        ),
    })
}

fn source(case: &Case) -> Option<String> {
    let rank = case.canvas.len();
    let mut s = String::from("layout l {\n");
    s += &format!(
        "  canvas ({});\n",
        case.canvas
            .iter()
            .map(|x| x.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    s += &format!(
        "  tile ({});\n",
        case.tile
            .iter()
            .map(|x| x.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    s += if case.raster {
        "  order raster;\n"
    } else {
        "  order tiled;\n"
    };
    for (i, (prefix, size, valid)) in case.segments.iter().enumerate() {
        s += &format!(
            "  segment s{i} {} {size} valid {};\n",
            if *prefix { "prefix" } else { "suffix" },
            valid.min(size)
        );
    }
    s += "}\npattern p on l {\n";
    let mut tiles = vec![];
    let mut tokens = vec![];
    for (tok, t, r, e) in &case.rules {
        let text = rule_text(case, *tok, *t, *r, *e)?;
        if *tok {
            tokens.push(format!("({text})"))
        } else {
            tiles.push(format!("({text})"))
        }
    }
    if !tiles.is_empty() {
        s += &format!("  tiles: {};\n", tiles.join(" && "));
    }
    if !tokens.is_empty() {
        s += &format!("  tokens: {};\n", tokens.join(" && "));
    }
    let groups: Vec<String> = std::iter::once("all".to_string())
        .chain(std::iter::once("canvas".to_string()))
        .chain((0..case.segments.len()).map(|i| format!("s{i}")))
        .collect();
    for (f, t) in &case.see {
        s += &format!(
            "  see {} -> {};\n",
            groups[*f as usize % groups.len()],
            groups[*t as usize % groups.len()]
        );
    }
    s += "}\nkernel k = attention(p) { heads 1; }\n";
    let _ = rank;
    Some(s)
}

fn case_strategy() -> impl Strategy<Value = Case> {
    (1usize..=3)
        .prop_flat_map(|rank| {
            let max = [48u32, 14, 7][rank - 1];
            (
                prop::collection::vec(1u32..=max, rank),
                prop::collection::vec(1u32..=4, rank),
                any::<bool>(),
                prop::collection::vec((any::<bool>(), 0u32..10, 0u32..10), 0..3),
                prop::collection::vec((any::<bool>(), 0u8..12, 0u32..3, 0u32..8), 1..3),
                prop::collection::vec((0u8..5, 0u8..5), 0..3),
            )
        })
        .prop_map(|(canvas, tile, raster, segments, rules, see)| Case {
            canvas,
            tile,
            raster,
            segments,
            rules,
            see,
        })
}

fn check_case(case: &Case) -> Result<(), TestCaseError> {
    let Some(text) = source(case) else {
        return Ok(());
    };
    let src = Source::new("case.attn", text.clone());
    let (fe, _) = driver::frontend(&src)
        .map_err(|d| TestCaseError::fail(format!("{text}\n{}", src.render(&d, false))))?;
    let compiled = match driver::compile_kernel(&fe.program, 0, &[]) {
        Ok(c) => c,
        // A zero-density rule is a legitimate error; anything else is a failure.
        Err(d) if d.iter().all(|x| x.code == "E0402") => return Ok(()),
        Err(d) => {
            return Err(TestCaseError::fail(format!(
                "{text}\n{}",
                src.render(&d, false)
            )))
        }
    };
    let sched = &compiled.schedule;
    let oracle = Oracle::new(&compiled.spec).map_err(TestCaseError::fail)?;
    let g = &sched.geom;
    let v = &sched.variants[0];
    let mut total = 0u64;
    for q in 0..g.total_tiles {
        for k in 0..g.total_tiles {
            let (class, count) = oracle
                .tile_pair(0, q, k)
                .map_err(|e| TestCaseError::fail(e.message))?;
            total += count;
            prop_assert_eq!(
                v.class_of(q, k),
                class,
                "tile pair ({}, {}) of\n{}",
                q,
                k,
                text
            );
        }
    }
    prop_assert_eq!(v.stats.active_pairs, total, "active pairs of\n{}", text);
    // The closed form, where there is one, gives exactly the canvas key tiles.
    if let (Some(closed), None) = (&v.closed, &compiled.spec.variants[0].tokens) {
        let dense = compiled.spec.rules.iter().any(|(f, t)| {
            use attnc::sema::program::Group::*;
            matches!(f, All | Canvas) && matches!(t, All | Canvas)
        });
        for q in 0..g.total_tiles {
            let TileRef::Canvas { coords } = g.tile_ref(q) else {
                continue;
            };
            let boxes = if dense {
                vec![(
                    [0; 3],
                    [
                        g.grid[0] - 1,
                        g.grid[1].saturating_sub(1),
                        g.grid[2].saturating_sub(1),
                    ],
                )]
            } else {
                closed
                    .eval_at(&coords, &g.grid, g.rank)
                    .map_err(|e| TestCaseError::fail(e.message))?
            };
            for k in g.canvas_first_tile..g.canvas_first_tile + g.canvas_tiles {
                let TileRef::Canvas { coords: kc } = g.tile_ref(k) else {
                    continue;
                };
                let in_closed = boxes
                    .iter()
                    .any(|(lo, hi)| (0..g.rank).all(|a| lo[a] <= kc[a] && kc[a] <= hi[a]));
                prop_assert_eq!(
                    in_closed,
                    v.class_of(q, k).is_some(),
                    "closed form at q {} k {} of\n{}",
                    q,
                    k,
                    text
                );
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn schedule_equals_brute_force(case in case_strategy()) {
        check_case(&case)?;
    }
}

/// The closed form is found for the rules that have one.
#[test]
fn closed_forms_exist_for_boxes_windows_lines_planes_strips_causal_unions() {
    let rules = [
        "abs(dh) <= 2 && abs(dw) <= 1",
        "window(h, 1) && window(w, 2)",
        "dh == 0 || dw == 0",
        "(dt == 0 && dh == 0) || (dt == 0 && dw == 0) || (dh == 0 && dw == 0)",
        "dt == 0 || dh == 0 || dw == 0",
        "abs(dw) <= 1",
        "kt <= qt",
        "(abs(dh) <= 1 && abs(dw) <= 1) || dh == 0",
        "!(dh != 0)",
    ];
    for r in rules {
        let rank = if r.contains('t') { 3 } else { 2 };
        let (canvas, tile) = if rank == 3 {
            ("8, 8, 8", "2, 2, 2")
        } else {
            ("16, 16", "2, 2")
        };
        let text = format!("layout l {{ canvas ({canvas}); tile ({tile}); }}\npattern p on l {{ tiles: {r}; }}\nkernel k = attention(p) {{}}\n");
        let src = Source::new("c.attn", text);
        let (fe, _) =
            driver::frontend(&src).unwrap_or_else(|d| panic!("{}", src.render(&d, false)));
        let c = driver::compile_kernel(&fe.program, 0, &[])
            .unwrap_or_else(|d| panic!("{}", src.render(&d, false)));
        assert!(
            c.schedule.variants[0].closed.is_some(),
            "no closed form for `{r}`"
        );
    }
}
