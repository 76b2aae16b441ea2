//! The plugin contract may never offer a plugin biometric data.
//!
//! Walks every type reachable from every function of both worlds in
//! `wit/gate-plugin.wit` and fails if any name suggests an image, crop,
//! template or embedding, if any float vector appears (an embedding by any
//! other name), or if raw bytes appear anywhere but the three places where
//! they are the plugin's own data (its kv values and its published payloads).
//! Since gate:plugin@0.2.0 no exact match score either: no name suggesting a
//! score or similarity and no float anywhere (plugins get the band and liveness).

use std::collections::HashSet;
use std::path::Path;
use wit_parser::{Resolve, Type, TypeDefKind, TypeId, WorldItem};

const FORBIDDEN: &[&str] = &[
    "image",
    "img",
    "frame",
    "crop",
    "template",
    "embedding",
    "pixel",
    "jpeg",
    "jpg",
    "png",
    "photo",
    "picture",
    "biometric",
    "landmark",
    "feature",
    "vector",
    "raw",
    "card-number",
    "pin-code",
    "pin-value",
    "score",
    "similarity",
    "distance",
    "cosine",
];

/// Where a `list<u8>` is allowed: the plugin's own kv values and published payloads.
const BYTES_ALLOWED: &[&str] = &["kv.get.result", "kv.set.value", "publish.publish.payload"];

struct Walker<'a> {
    resolve: &'a Resolve,
    problems: Vec<String>,
    seen: HashSet<(TypeId, String)>,
}

impl Walker<'_> {
    fn name(&mut self, path: &str, name: &str) {
        let lower = name.to_ascii_lowercase();
        for word in FORBIDDEN {
            if lower.split(['-', '_']).any(|part| part == *word) || lower.contains(word) && word.contains('-') {
                self.problems.push(format!("{path}: name `{name}` suggests biometric or raw credential data ({word})"));
            }
        }
    }

    fn ty(&mut self, path: &str, ty: &Type) {
        if matches!(ty, Type::F32 | Type::F64) {
            self.problems.push(format!("{path}: a float could carry an exact match score"));
        }
        let Type::Id(id) = ty else { return };
        if !self.seen.insert((*id, path.to_string())) {
            return;
        }
        let def = &self.resolve.types[*id];
        if let Some(n) = &def.name {
            self.name(path, n);
        }
        match &def.kind {
            TypeDefKind::Record(r) => {
                for f in &r.fields {
                    self.name(path, &f.name);
                    self.ty(&format!("{path}.{}", f.name), &f.ty);
                }
            }
            TypeDefKind::Variant(v) => {
                for c in &v.cases {
                    self.name(path, &c.name);
                    if let Some(t) = &c.ty {
                        self.ty(&format!("{path}.{}", c.name), t);
                    }
                }
            }
            TypeDefKind::Enum(e) => {
                for c in &e.cases {
                    self.name(path, &c.name);
                }
            }
            TypeDefKind::Flags(f) => {
                for c in &f.flags {
                    self.name(path, &c.name);
                }
            }
            TypeDefKind::List(inner) | TypeDefKind::FixedLengthList(inner, _) => {
                match inner {
                    Type::F32 | Type::F64 => self.problems.push(format!("{path}: a list of floats looks like an embedding")),
                    Type::U8 | Type::S8 if !BYTES_ALLOWED.iter().any(|a| path.ends_with(a)) => self.problems.push(format!("{path}: raw bytes could carry an image or template")),
                    _ => {}
                }
                self.ty(&format!("{path}[]"), inner);
            }
            TypeDefKind::Option(t) | TypeDefKind::Type(t) => self.ty(path, t),
            TypeDefKind::Result(r) => {
                if let Some(t) = &r.ok {
                    self.ty(path, t);
                }
                if let Some(t) = &r.err {
                    self.ty(&format!("{path}.err"), t);
                }
            }
            TypeDefKind::Tuple(t) => {
                for (i, t) in t.types.iter().enumerate() {
                    self.ty(&format!("{path}.{i}"), t);
                }
            }
            TypeDefKind::Map(k, v) => {
                self.ty(&format!("{path}.key"), k);
                self.ty(&format!("{path}.value"), v);
            }
            other => self.problems.push(format!("{path}: unexpected kind of type {other:?}")),
        }
    }
}

fn walk(resolve: &Resolve) -> (Vec<String>, usize) {
    let mut w = Walker { resolve, problems: Vec::new(), seen: HashSet::new() };
    let mut functions = 0;
    for (_, world) in resolve.worlds.iter() {
        for (_, item) in world.imports.iter().chain(world.exports.iter()) {
            let WorldItem::Interface { id, .. } = item else { continue };
            let iface = &resolve.interfaces[*id];
            let iname = iface.name.clone().unwrap_or_default();
            for (fname, f) in &iface.functions {
                functions += 1;
                let path = format!("{iname}.{fname}");
                w.name(&path, fname);
                for p in &f.params {
                    w.name(&path, &p.name);
                    w.ty(&format!("{path}.{}", p.name), &p.ty);
                }
                if let Some(r) = &f.result {
                    w.ty(&format!("{path}.result"), r);
                }
            }
        }
    }
    (w.problems, functions)
}

fn contract() -> Resolve {
    let mut r = Resolve::default();
    r.push_path(Path::new(env!("CARGO_MANIFEST_DIR")).join("../wit")).expect("wit/ parses");
    r
}

#[test]
fn contract_offers_plugins_no_biometric_data() {
    let resolve = contract();
    let pkg = resolve.packages.iter().map(|(_, p)| p.name.to_string()).find(|n| n.starts_with("gate:plugin")).expect("the contract's package");
    assert_eq!(pkg, "gate:plugin@0.2.0", "the face-match record changed incompatibly in 0.2.0");
    let (problems, functions) = walk(&resolve);
    assert!(functions >= 9, "expected the full contract, walked only {functions} functions");
    assert!(problems.is_empty(), "the plugin contract exposes data it must not:\n{}", problems.join("\n"));
}

#[test]
fn the_check_catches_an_image_field() {
    // The same walk over a contract that leaks a crop must fail: the guard works.
    let mut resolve = contract();
    resolve
        .push_str(
            "leaky.wit",
            "package evil:leak@0.1.0;
             interface policy { record face { score: f32, crop: list<u8> } decide: func(f: face) -> bool; }
             world leaky { export policy; }",
        )
        .expect("parses");
    let (problems, _) = walk(&resolve);
    assert!(problems.iter().any(|p| p.contains("crop")), "{problems:?}");
    assert!(problems.iter().any(|p| p.contains("raw bytes")), "{problems:?}");
    // The exact score 0.1.0 still had is caught by name and by type.
    assert!(problems.iter().any(|p| p.contains("name `score`")), "{problems:?}");
    assert!(problems.iter().any(|p| p.contains("float could carry")), "{problems:?}");
}

#[test]
fn the_check_catches_an_embedding_vector() {
    let mut resolve = contract();
    resolve.push_str("leaky2.wit", "package evil:leak2@0.1.0; interface policy { decide: func(v: list<f32>) -> bool; } world leaky2 { export policy; }").expect("parses");
    let (problems, _) = walk(&resolve);
    assert!(problems.iter().any(|p| p.contains("embedding")), "{problems:?}");
}
