//! Where every token and tile sits: the sequence is the prefix segments, the canvas, then
//! the suffix segments. Tiles are numbered the same way (segment tiles are runs of
//! `tile_tokens` consecutive tokens; canvas tiles follow the tile grid in raster order),
//! whatever the token order in memory. Token order only changes addresses.

use crate::sema::spec::{Layout, Spec};
use crate::syntax::ast::{Order, Placement};

pub const MAX_RANK: usize = 3;

#[derive(Clone, Debug, PartialEq)]
pub struct Geometry {
    pub rank: usize,
    /// Canvas extent per axis, tokens.
    pub canvas: [u32; MAX_RANK],
    /// Tile extent per axis, tokens.
    pub tile: [u32; MAX_RANK],
    /// Tiles per axis.
    pub grid: [u32; MAX_RANK],
    pub tile_tokens: u32,
    pub order: Order,
    /// Segments in sequence order.
    pub segments: Vec<SegmentGeom>,
    pub canvas_first_tile: u32,
    pub canvas_tiles: u32,
    pub canvas_first_pos: u64,
    pub canvas_tokens: u64,
    pub total_tiles: u32,
    pub total_tokens: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SegmentGeom {
    /// Index in the layout's segment list (what `see` rules refer to).
    pub index: usize,
    pub name: String,
    pub placement: Placement,
    pub size: u32,
    pub valid: u32,
    pub first_pos: u64,
    pub first_tile: u32,
    pub tiles: u32,
}

/// What a tile is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TileRef {
    /// `order`-th tile of segment `seg` (position in `Geometry::segments`).
    Segment {
        seg: usize,
        index: u32,
    },
    Canvas {
        coords: [u32; MAX_RANK],
    },
}

/// What a token is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenRef {
    Segment { seg: usize, offset: u32 },
    Canvas { coords: [u32; MAX_RANK] },
}

impl Geometry {
    /// Fails only on sizes that instantiation already rejects (it returns a message).
    pub fn new(layout: &Layout) -> Result<Geometry, String> {
        let rank = layout.rank();
        if rank == 0 || rank > MAX_RANK || layout.tile.len() != rank {
            return Err(format!("a canvas of rank {rank} is not supported"));
        }
        let mut canvas = [1u32; MAX_RANK];
        let mut tile = [1u32; MAX_RANK];
        let mut grid = [1u32; MAX_RANK];
        for a in 0..rank {
            canvas[a] = layout.canvas[a];
            tile[a] = layout.tile[a].min(layout.canvas[a]).max(1);
            grid[a] = canvas[a].div_ceil(tile[a]);
        }
        let tile_tokens64: u64 = tile[..rank].iter().map(|t| u64::from(*t)).product();
        let tile_tokens = u32::try_from(tile_tokens64).map_err(|_| "tile too large".to_string())?;
        let canvas_tiles64: u64 = grid[..rank].iter().map(|g| u64::from(*g)).product();
        let canvas_tokens: u64 = canvas[..rank].iter().map(|c| u64::from(*c)).product();
        let mut segments = vec![];
        let mut pos = 0u64;
        let mut tiles = 0u64;
        let mut push = |placement: Placement, pos: &mut u64, tiles: &mut u64| {
            for (i, s) in layout
                .segments
                .iter()
                .enumerate()
                .filter(|(_, s)| s.placement == placement)
            {
                let n = s.size.div_ceil(tile_tokens);
                segments.push(SegmentGeom {
                    index: i,
                    name: s.name.clone(),
                    placement,
                    size: s.size,
                    valid: s.valid.min(s.size),
                    first_pos: *pos,
                    first_tile: *tiles as u32,
                    tiles: n,
                });
                *pos += u64::from(s.size);
                *tiles += u64::from(n);
            }
        };
        push(Placement::Prefix, &mut pos, &mut tiles);
        let canvas_first_tile = tiles;
        let canvas_first_pos = pos;
        pos += canvas_tokens;
        tiles += canvas_tiles64;
        push(Placement::Suffix, &mut pos, &mut tiles);
        let total_tiles =
            u32::try_from(tiles).map_err(|_| format!("{tiles} tiles are too many"))?;
        Ok(Geometry {
            rank,
            canvas,
            tile,
            grid,
            tile_tokens,
            order: layout.order,
            segments,
            canvas_first_tile: canvas_first_tile as u32,
            canvas_tiles: canvas_tiles64 as u32,
            canvas_first_pos,
            canvas_tokens,
            total_tiles,
            total_tokens: pos,
        })
    }

    pub fn from_spec(spec: &Spec) -> Result<Geometry, String> {
        Geometry::new(&spec.layout)
    }

    pub fn tile_ref(&self, t: u32) -> TileRef {
        if t >= self.canvas_first_tile && t < self.canvas_first_tile + self.canvas_tiles {
            return TileRef::Canvas {
                coords: self.canvas_tile_coords(t - self.canvas_first_tile),
            };
        }
        for (i, s) in self.segments.iter().enumerate() {
            if t >= s.first_tile && t < s.first_tile + s.tiles {
                return TileRef::Segment {
                    seg: i,
                    index: t - s.first_tile,
                };
            }
        }
        TileRef::Segment { seg: 0, index: 0 }
    }

    /// Grid coordinates of the `local`-th canvas tile (raster order over the grid).
    pub fn canvas_tile_coords(&self, mut local: u32) -> [u32; MAX_RANK] {
        let mut c = [0u32; MAX_RANK];
        for a in (0..self.rank).rev() {
            c[a] = local % self.grid[a];
            local /= self.grid[a];
        }
        c
    }

    /// Tile id of the canvas tile at grid coordinates.
    pub fn canvas_tile_id(&self, coords: &[u32; MAX_RANK]) -> u32 {
        let mut id = 0u32;
        for a in 0..self.rank {
            id = id * self.grid[a] + coords[a];
        }
        self.canvas_first_tile + id
    }

    /// Tokens along axis `a` in the tile at grid coordinate `c` (the last may be ragged).
    pub fn tile_extent(&self, a: usize, c: u32) -> u32 {
        let start = c * self.tile[a];
        self.tile[a].min(self.canvas[a].saturating_sub(start))
    }

    /// True when the tile at these grid coordinates misses tokens on some axis.
    pub fn canvas_tile_ragged(&self, coords: &[u32; MAX_RANK]) -> bool {
        (0..self.rank).any(|a| self.tile_extent(a, coords[a]) < self.tile[a])
    }

    /// Tokens in a tile (what exists, padding included).
    pub fn tile_len(&self, t: u32) -> u32 {
        match self.tile_ref(t) {
            TileRef::Canvas { coords } => (0..self.rank)
                .map(|a| self.tile_extent(a, coords[a]))
                .product(),
            TileRef::Segment { seg, index } => {
                let s = &self.segments[seg];
                self.tile_tokens.min(s.size - index * self.tile_tokens)
            }
        }
    }

    /// Tokens of a tile that can be attended to (segment padding excluded).
    pub fn tile_valid_len(&self, t: u32) -> u32 {
        match self.tile_ref(t) {
            TileRef::Canvas { .. } => self.tile_len(t),
            TileRef::Segment { seg, index } => {
                let s = &self.segments[seg];
                let start = index * self.tile_tokens;
                self.tile_tokens.min(s.valid.saturating_sub(start))
            }
        }
    }

    /// The token at a sequence position.
    pub fn token_at(&self, pos: u64) -> TokenRef {
        if pos >= self.canvas_first_pos && pos < self.canvas_first_pos + self.canvas_tokens {
            return TokenRef::Canvas {
                coords: self.canvas_coords_at(pos - self.canvas_first_pos),
            };
        }
        for (i, s) in self.segments.iter().enumerate() {
            if pos >= s.first_pos && pos < s.first_pos + u64::from(s.size) {
                return TokenRef::Segment {
                    seg: i,
                    offset: (pos - s.first_pos) as u32,
                };
            }
        }
        TokenRef::Segment { seg: 0, offset: 0 }
    }

    /// Canvas coordinates of the `local`-th canvas token in memory order.
    pub fn canvas_coords_at(&self, local: u64) -> [u32; MAX_RANK] {
        let mut c = [0u32; MAX_RANK];
        match self.order {
            Order::Raster => {
                let mut l = local;
                for a in (0..self.rank).rev() {
                    c[a] = (l % u64::from(self.canvas[a])) as u32;
                    l /= u64::from(self.canvas[a]);
                }
            }
            Order::Tiled => {
                // Tiles in raster order over the grid; tokens in raster order inside a tile.
                // Ragged tiles hold fewer tokens, so walk the tile sizes.
                let tt = u64::from(self.tile_tokens);
                // Fast path: no ragged axis means every tile holds tile_tokens tokens.
                let ragged = (0..self.rank).any(|a| self.canvas[a] % self.tile[a] != 0);
                let (tile, mut within) = if !ragged {
                    ((local / tt) as u32, local % tt)
                } else {
                    self.ragged_tile_of(local)
                };
                let tc = self.canvas_tile_coords(tile);
                let ext: Vec<u64> = (0..self.rank)
                    .map(|a| u64::from(self.tile_extent(a, tc[a])))
                    .collect();
                for a in (0..self.rank).rev() {
                    c[a] = tc[a] * self.tile[a] + (within % ext[a]) as u32;
                    within /= ext[a];
                }
            }
        }
        c
    }

    /// (tile, offset inside it) of the `local`-th canvas token when tiles are ragged.
    /// Along each axis, every tile but the last is full, so the coordinate is a division.
    fn ragged_tile_of(&self, local: u64) -> (u32, u64) {
        let mut remaining = local;
        let mut coords = [0u32; MAX_RANK];
        let mut before = 1u64; // product of the extents of the axes already fixed
        for a in 0..self.rank {
            let after: u64 = (a + 1..self.rank)
                .map(|b| u64::from(self.canvas[b]))
                .product();
            let full_slab = before * u64::from(self.tile[a]) * after;
            let c = (remaining / full_slab).min(u64::from(self.grid[a] - 1));
            remaining -= c * full_slab;
            coords[a] = c as u32;
            before *= u64::from(self.tile_extent(a, coords[a]));
        }
        (
            self.canvas_tile_id(&coords) - self.canvas_first_tile,
            remaining,
        )
    }

    /// Sequence position of a canvas token.
    pub fn canvas_pos(&self, coords: &[u32; MAX_RANK]) -> u64 {
        let local = match self.order {
            Order::Raster => {
                let mut l = 0u64;
                for a in 0..self.rank {
                    l = l * u64::from(self.canvas[a]) + u64::from(coords[a]);
                }
                l
            }
            Order::Tiled => {
                let mut tc = [0u32; MAX_RANK];
                for a in 0..self.rank {
                    tc[a] = coords[a] / self.tile[a];
                }
                let start = self.tiled_tile_start(&tc);
                let mut within = 0u64;
                for a in 0..self.rank {
                    within = within * u64::from(self.tile_extent(a, tc[a]))
                        + u64::from(coords[a] % self.tile[a]);
                }
                start + within
            }
        };
        self.canvas_first_pos + local
    }

    /// Canvas-local position of the first token of a tile in tiled order.
    pub fn tiled_tile_start(&self, tc: &[u32; MAX_RANK]) -> u64 {
        // Tokens in all tiles before `tc` in raster order over the grid: count per axis.
        let mut start = 0u64;
        for a in 0..self.rank {
            // Tiles that precede along axis a (with equal earlier coordinates) cover full
            // extents of the later axes.
            let before: u64 = u64::from(tc[a].min(self.grid[a])) * u64::from(self.tile[a]);
            let before = before.min(u64::from(self.canvas[a]));
            let mut slab = before;
            for (b, &cb) in tc.iter().enumerate().take(a) {
                slab *= u64::from(self.tile_extent(b, cb));
            }
            for b in a + 1..self.rank {
                slab *= u64::from(self.canvas[b]);
            }
            start += slab;
        }
        start
    }
}
