//! The pull-time CDFs as a PNG: one curve per run, time as a multiple of the run's chunked
//! bound (so runs of different sizes share the axis), with the aims marked. Drawn with
//! plotters into an RGB buffer and written with the png crate; the text uses a TrueType font
//! read at run time (DejaVu Sans from Debian's fonts-dejavu-core, installed by
//! scripts/install-deps.sh), so nothing depends on fontconfig.

use std::path::Path;

use plotters::prelude::*;

use crate::report::Row;
use crate::SimError;

/// Where the font is looked for.
pub const FONT_PATHS: [&str; 2] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

const W: u32 = 1100;
const H: u32 = 700;

fn font() -> Result<(), SimError> {
    let found = FONT_PATHS
        .iter()
        .find(|p| Path::new(p).exists())
        .ok_or(SimError::NoFont {
            tried: FONT_PATHS.to_vec(),
        })?;
    let path = Path::new(found);
    let bytes = std::fs::read(path).map_err(|e| SimError::Font {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    // plotters keeps registered fonts for the process.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).map_err(|_| {
        SimError::Font {
            path: path.to_owned(),
            reason: "not a usable TrueType font".into(),
        }
    })
}

/// Draws the CDFs of `rows` (each against its chunked bound) into a PNG at `path`.
pub fn cdf_png(path: &Path, title: &str, rows: &[Row]) -> Result<(), SimError> {
    font()?;
    let err = |reason: String| SimError::Draw {
        path: path.to_owned(),
        reason,
    };
    let mut buf = vec![255u8; (W * H * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (W, H)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
        let x_min = rows
            .iter()
            .map(|r| r.p(0.0) / r.chunked)
            .fold(0.9f64, f64::min)
            .max(0.2)
            * 0.95;
        let x_max = rows
            .iter()
            .map(|r| r.p(100.0) / r.chunked)
            .fold(1.4f64, f64::max)
            .min(4.0)
            * 1.05;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 24))
            .margin(16)
            .x_label_area_size(50)
            .y_label_area_size(60)
            .build_cartesian_2d(x_min..x_max, 0f64..1.0f64)
            .map_err(|e| err(e.to_string()))?;
        chart
            .configure_mesh()
            .x_desc("pull time / chunked bound (F/u)(1 + floor(log2 N)/M)")
            .y_desc("fraction of nodes done")
            .label_style(("sans-serif", 15))
            .draw()
            .map_err(|e| err(e.to_string()))?;
        for (aim, label) in [(1.1, "p50 aim 1.1x"), (1.3, "p99 aim 1.3x")] {
            chart
                .draw_series(LineSeries::new(
                    [(aim, 0.0), (aim, 1.0)],
                    BLACK.mix(0.35).stroke_width(1),
                ))
                .map_err(|e| err(e.to_string()))?
                .label(label)
                .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLACK.mix(0.35)));
        }
        for (k, row) in rows.iter().enumerate() {
            let color = Palette99::pick(k).to_rgba();
            let n = row.nodes.max(1) as f64;
            let mut points = vec![(x_min, 0.0)];
            for (j, t) in row.times.iter().enumerate() {
                let x = t / row.chunked;
                points.push((x, j as f64 / n));
                points.push((x, (j + 1) as f64 / n));
            }
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)))
                .map_err(|e| err(e.to_string()))?
                .label(format!(
                    "{} N={} F={:.2} GB have_peers {}: p50 {:.3}x p99 {:.3}x",
                    row.label,
                    row.nodes,
                    row.image_bytes as f64 / 1e9,
                    row.have_peers,
                    row.p(50.0) / row.chunked,
                    row.p(99.0) / row.chunked
                ))
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .label_font(("sans-serif", 14))
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .draw()
            .map_err(|e| err(e.to_string()))?;
        root.present().map_err(|e| err(e.to_string()))?;
    }
    let write = |source| SimError::Write {
        path: path.to_owned(),
        source,
    };
    let encode = |source| SimError::Encode {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::create(path).map_err(write)?;
    let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), W, H);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().map_err(encode)?;
    writer.write_image_data(&buf).map_err(encode)?;
    writer.finish().map_err(encode)
}
