//! Fetches, repairs and verifies the face models, the ONNX Runtime library and the
//! test photographs listed in `models/manifest.toml`.
//!
//! Every download is pinned by sha256 and cached in `.cache/downloads/`; every file
//! written under `models/` is checked against the sha256 the manifest gives for it.
//! A second run with everything in place only hashes the files and returns.

use anyhow::{bail, ensure, Context, Result};
use onnx_protobuf::{Message, ModelProto, TensorProto};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// `models/manifest.toml`, as far as the setup needs it.
#[derive(Debug, Deserialize)]
struct Manifest {
    source: Vec<Source>,
    file: Vec<FileEntry>,
}

/// A registry artefact that files are taken from.
#[derive(Debug, Deserialize)]
struct Source {
    name: String,
    url: String,
    sha256: String,
}

/// One file the setup places under `models/`.
#[derive(Debug, Deserialize)]
struct FileEntry {
    path: String,
    source: String,
    member: String,
    sha256: String,
    #[serde(default)]
    arch: Option<String>,
    #[serde(default)]
    transform: Option<String>,
}

/// Fetches the models listed in models/manifest.toml and checks their sha256.
pub fn fetch(root: &Path) -> Result<()> {
    let models = root.join("models");
    let manifest_path = models.join("manifest.toml");
    let text = fs::read_to_string(&manifest_path).with_context(|| format!("reading {}", manifest_path.display()))?;
    let manifest: Manifest = toml::from_str(&text).with_context(|| format!("parsing {}", manifest_path.display()))?;
    let cache = root.join(".cache").join("downloads");
    let arch = std::env::consts::ARCH;

    let mut wanted: Vec<&FileEntry> = Vec::new();
    for entry in &manifest.file {
        if entry.arch.as_deref().is_some_and(|a| a != arch) {
            continue;
        }
        wanted.push(entry);
    }
    ensure!(wanted.iter().any(|e| e.path.starts_with("lib/")), "models/manifest.toml lists no ONNX Runtime library for this machine's architecture ({arch})");

    // Hashing ~80 MB in a debug build takes seconds: a file whose size and mtime are those
    // recorded when it was last verified against the same manifest digest is not re-hashed.
    let stamp_path = root.join(".cache").join("models.verified");
    let old_stamp = fs::read_to_string(&stamp_path).unwrap_or_default();
    let mut stamp = String::new();
    let mut fetched = 0usize;
    for entry in wanted {
        let dest = models.join(&entry.path);
        if let Some(line) = stamp_line(&dest, &entry.sha256) {
            if old_stamp.lines().any(|l| l == line) {
                stamp += &(line + "\n");
                continue;
            }
        }
        if dest.is_file() && sha256_file(&dest)? == entry.sha256 {
            stamp += &(stamp_line(&dest, &entry.sha256).unwrap_or_default() + "\n");
            continue;
        }
        let source = manifest.source.iter().find(|s| s.name == entry.source).with_context(|| format!("{}: unknown source {:?}", entry.path, entry.source))?;
        let archive = download(source, &cache)?;
        let raw = extract(&archive, &entry.member).with_context(|| format!("extracting {} from {}", entry.member, archive.display()))?;
        let bytes = match entry.transform.as_deref() {
            None => raw,
            Some("fold-dequantize") => fold_dequantize(&raw).with_context(|| format!("repairing {} from {}", entry.path, source.name))?,
            Some(other) => bail!("{}: unknown transform {other:?} in manifest", entry.path),
        };
        let got = hex::encode(Sha256::digest(&bytes));
        ensure!(got == entry.sha256, "{}: sha256 {got} does not match models/manifest.toml ({})", entry.path, entry.sha256);
        write_atomically(&dest, &bytes)?;
        stamp += &(stamp_line(&dest, &entry.sha256).unwrap_or_default() + "\n");
        fetched += 1;
    }
    if stamp != old_stamp {
        write_atomically(&stamp_path, stamp.as_bytes())?;
    }
    if fetched > 0 {
        eprintln!("models: placed {fetched} verified file(s) under {}", models.display());
    }
    Ok(())
}

/// Downloads a source into the cache unless a copy with the pinned sha256 is there.
fn download(source: &Source, cache: &Path) -> Result<PathBuf> {
    let name = source.url.rsplit('/').next().and_then(|n| n.split('#').next()).filter(|n| !n.is_empty()).with_context(|| format!("source {}: url has no file name", source.name))?;
    let path = cache.join(name);
    if path.is_file() && sha256_file(&path)? == source.sha256 {
        return Ok(path);
    }
    fs::create_dir_all(cache).with_context(|| format!("creating {}", cache.display()))?;
    eprintln!("models: downloading {}", source.url);
    // The system's trust store, not a bundled one: this is what pip and curl trust here.
    let agent: ureq::Agent = ureq::Agent::config_builder().tls_config(ureq::tls::TlsConfig::builder().root_certs(ureq::tls::RootCerts::PlatformVerifier).build()).build().into();
    let response = agent.get(&source.url).call().with_context(|| format!("downloading {}", source.url))?;
    let mut reader = response.into_body().into_reader();
    let tmp = path.with_extension("part");
    let mut file = fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = reader.read(&mut buf).with_context(|| format!("reading {}", source.url))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n])?;
    }
    file.sync_all()?;
    let got = hex::encode(hasher.finalize());
    if got != source.sha256 {
        let _ = fs::remove_file(&tmp);
        bail!("{}: sha256 {got} does not match the pinned {}", source.url, source.sha256);
    }
    fs::rename(&tmp, &path)?;
    Ok(path)
}

/// Reads one member out of a wheel (zip), an sdist (tar.gz) or an npm tarball (tgz).
fn extract(archive: &Path, member: &str) -> Result<Vec<u8>> {
    let file = fs::File::open(archive)?;
    let name = archive.to_string_lossy();
    let mut out = Vec::new();
    if name.ends_with(".whl") || name.ends_with(".zip") {
        let mut zip = zip::ZipArchive::new(file)?;
        let mut entry = zip.by_name(member).with_context(|| format!("no member {member}"))?;
        entry.read_to_end(&mut out)?;
        return Ok(out);
    }
    // npm tarballs are `.tgz`: a gzipped tar like an sdist.
    if name.ends_with(".tar.gz") || name.ends_with(".tgz") {
        let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(file));
        for entry in tar.entries()? {
            let mut entry = entry?;
            if entry.path()?.as_ref() == Path::new(member) {
                entry.read_to_end(&mut out)?;
                return Ok(out);
            }
        }
        bail!("no member {member}");
    }
    bail!("unknown archive type")
}

fn write_atomically(dest: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = dest.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = dest.with_extension("part");
    fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, dest).with_context(|| format!("writing {}", dest.display()))?;
    Ok(())
}

/// "path size mtime-ns sha256" of a file as it is now, or None if it is missing.
fn stamp_line(path: &Path, sha256: &str) -> Option<String> {
    let meta = fs::metadata(path).ok()?;
    let mtime = meta.modified().ok()?.duration_since(std::time::UNIX_EPOCH).ok()?.as_nanos();
    Some(format!("{} {} {mtime} {sha256}", path.display(), meta.len()))
}

fn sha256_file(path: &Path) -> Result<String> {
    let mut file = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
}

const FLOAT: i32 = 1;
const UINT8: i32 = 2;
const INT8: i32 = 3;
const UINT16: i32 = 4;
const INT16: i32 = 5;
const INT32: i32 = 6;

/// Folds every constant `DequantizeLinear` (and the `Constant` nodes feeding them) into an
/// fp32 initializer and drops graph inputs nothing reads.
///
/// This repairs YuNet int8bq (onnxruntime rejects its per-tensor nodes that carry a
/// `block_size`), removes SFace's 29 unused inputs, and runs 2-3x faster than the
/// quantized graphs on the gateway's CPU. The output is deterministic, so its sha256 is
/// pinned in the manifest.
fn fold_dequantize(bytes: &[u8]) -> Result<Vec<u8>> {
    let mut model = ModelProto::parse_from_bytes(bytes).context("not an ONNX model")?;
    let graph = model.graph.as_mut().context("ONNX model has no graph")?;

    let mut inits: Vec<TensorProto> = std::mem::take(&mut graph.initializer);
    let mut index: HashMap<String, usize> = inits.iter().enumerate().map(|(i, t)| (t.name.clone(), i)).collect();
    let mut kept = Vec::new();
    let mut folded = 0usize;
    for node in std::mem::take(&mut graph.node) {
        if node.op_type == "Constant" && node.output.len() == 1 {
            if let Some(t) = node.attribute.iter().find(|a| a.name == "value").and_then(|a| a.t.as_ref()) {
                let mut t = t.clone();
                t.name = node.output[0].clone();
                index.insert(t.name.clone(), inits.len());
                inits.push(t);
                continue;
            }
        }
        let constant_inputs = node.input.iter().all(|i| i.is_empty() || index.contains_key(i));
        if node.op_type == "DequantizeLinear" && constant_inputs && node.output.len() == 1 {
            let get = |k: usize| node.input.get(k).filter(|n| !n.is_empty()).map(|n| &inits[index[n]]);
            let x = get(0).context("DequantizeLinear without input")?;
            let scale = get(1).context("DequantizeLinear without scale")?;
            let zero = get(2);
            let attr = |name: &str, default: i64| node.attribute.iter().find(|a| a.name == name).map_or(default, |a| a.i);
            let values = dequantize(x, scale, zero, attr("axis", 1), attr("block_size", 0)).with_context(|| format!("folding node {:?}", node.name))?;
            let mut t = TensorProto::new();
            t.name = node.output[0].clone();
            t.dims = x.dims.clone();
            t.data_type = FLOAT;
            t.raw_data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            index.insert(t.name.clone(), inits.len());
            inits.push(t);
            folded += 1;
            continue;
        }
        kept.push(node);
    }
    graph.node = kept;

    let mut used: HashSet<String> = graph.node.iter().flat_map(|n| n.input.iter().cloned()).collect();
    used.extend(graph.output.iter().map(|o| o.name.clone()));
    let mut seen = HashSet::new();
    graph.initializer = inits.into_iter().filter(|t| used.contains(&t.name) && seen.insert(t.name.clone())).collect();
    let init_names: HashSet<&String> = graph.initializer.iter().map(|t| &t.name).collect();
    let before = graph.input.len();
    let mut inputs = std::mem::take(&mut graph.input);
    inputs.retain(|i| used.contains(&i.name) && !init_names.contains(&i.name));
    graph.input = inputs;
    eprintln!("models: folded {folded} DequantizeLinear node(s), graph inputs {before} -> {}", graph.input.len());
    ensure!(!graph.node.iter().any(|n| n.op_type == "DequantizeLinear"), "a DequantizeLinear node with a non-constant input is left; the repair does not apply");
    model.write_to_bytes().context("serialising the repaired model")
}

/// Integer payload of a quantized tensor, widened to i64.
fn int_values(t: &TensorProto) -> Result<Vec<i64>> {
    let raw = &t.raw_data;
    Ok(match t.data_type {
        INT8 if !raw.is_empty() => raw.iter().map(|&b| b as i8 as i64).collect(),
        UINT8 if !raw.is_empty() => raw.iter().map(|&b| b as i64).collect(),
        INT16 if !raw.is_empty() => raw.chunks_exact(2).map(|c| i16::from_le_bytes([c[0], c[1]]) as i64).collect(),
        UINT16 if !raw.is_empty() => raw.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]]) as i64).collect(),
        INT32 if !raw.is_empty() => raw.chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64).collect(),
        INT8 | UINT8 | INT16 | UINT16 | INT32 => t.int32_data.iter().map(|&v| v as i64).collect(),
        other => bail!("tensor {:?}: quantized type {other} is not supported", t.name),
    })
}

fn float_values(t: &TensorProto) -> Result<Vec<f32>> {
    ensure!(t.data_type == FLOAT, "scale {:?} has type {}, expected float", t.name, t.data_type);
    if t.raw_data.is_empty() {
        return Ok(t.float_data.clone());
    }
    Ok(t.raw_data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
}

/// `DequantizeLinear` semantics (opset 21): per-tensor, per-axis or blocked along `axis`.
fn dequantize(x: &TensorProto, scale: &TensorProto, zero: Option<&TensorProto>, axis: i64, block: i64) -> Result<Vec<f32>> {
    let xv = int_values(x)?;
    let sv = float_values(scale)?;
    let zv = match zero {
        Some(z) => int_values(z)?,
        None => vec![0; sv.len()],
    };
    ensure!(zv.len() == sv.len(), "zero point and scale differ in length");
    let numel: i64 = x.dims.iter().product();
    ensure!(xv.len() as i64 == numel, "tensor {:?} holds {} values for dims {:?}", x.name, xv.len(), x.dims);
    if sv.len() == 1 {
        return Ok(xv.iter().map(|&q| (q - zv[0]) as f32 * sv[0]).collect());
    }
    let rank = x.dims.len() as i64;
    let axis = if axis < 0 { axis + rank } else { axis };
    ensure!((0..rank).contains(&axis), "axis {axis} out of range for rank {rank}");
    let axis = axis as usize;
    let dim = x.dims[axis] as usize;
    let inner: usize = x.dims[axis + 1..].iter().product::<i64>() as usize;
    let mut out = Vec::with_capacity(xv.len());
    if block == 0 {
        ensure!(sv.len() == dim, "per-axis scale has {} values for axis length {dim}", sv.len());
        for (i, &q) in xv.iter().enumerate() {
            let a = (i / inner) % dim;
            out.push((q - zv[a]) as f32 * sv[a]);
        }
    } else {
        let block = block as usize;
        let sdim = dim.div_ceil(block);
        let outer = xv.len() / (dim * inner);
        ensure!(sv.len() == outer * sdim * inner, "blocked scale has {} values, expected {}", sv.len(), outer * sdim * inner);
        for (i, &q) in xv.iter().enumerate() {
            let o = i / (dim * inner);
            let a = (i / inner) % dim;
            let n = i % inner;
            let s = (o * sdim + a / block) * inner + n;
            out.push((q - zv[s]) as f32 * sv[s]);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(name: &str, dims: &[i64], data_type: i32, raw: Vec<u8>) -> TensorProto {
        let mut t = TensorProto::new();
        t.name = name.into();
        t.dims = dims.to_vec();
        t.data_type = data_type;
        t.raw_data = raw;
        t
    }

    #[test]
    fn blocked_dequantize_uses_one_scale_per_block_along_the_axis() {
        // 2x4 int8, blocks of 2 along axis 1 -> scale 2x2.
        let x = tensor("x", &[2, 4], INT8, vec![1, 2, 3, 4, 0xff, 0xfe, 5, 6]);
        let s: Vec<f32> = vec![1.0, 10.0, 100.0, 1000.0];
        let scale = tensor("s", &[2, 2], FLOAT, s.iter().flat_map(|v| v.to_le_bytes()).collect());
        let out = dequantize(&x, &scale, None, 1, 2).unwrap();
        assert_eq!(out, vec![1.0, 2.0, 30.0, 40.0, -100.0, -200.0, 5000.0, 6000.0]);
    }

    #[test]
    fn per_tensor_scale_with_block_size_is_per_tensor() {
        let x = tensor("x", &[3], UINT8, vec![10, 12, 14]);
        let scale = tensor("s", &[1], FLOAT, 0.5f32.to_le_bytes().to_vec());
        let zero = tensor("z", &[1], UINT8, vec![10]);
        assert_eq!(dequantize(&x, &scale, Some(&zero), 0, 32).unwrap(), vec![0.0, 1.0, 2.0]);
    }
}
