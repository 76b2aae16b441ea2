//! The example site policy of `plugins/examples/`, written in every language `gate plugin new`
//! writes and built by `cargo xtask plugins` as a site integrator would build it: each
//! component replays the shared sample trace to the same decisions, on the real sandbox.

mod support;

use support::{gate, root, text};

#[test]
fn the_example_policy_decides_the_sample_trace_identically_in_every_language() {
    let trace = root().join("plugins/examples/tests/sample.jsonl");
    let mut outputs = Vec::new();
    // Every language `gate plugin new` writes must have its example built by xtask.
    for lang in gate::scaffold::Lang::ALL.map(gate::scaffold::Lang::name) {
        let wasm = root().join("target/plugins/examples").join(lang).join("example-policy.wasm");
        assert!(wasm.exists(), "{} is missing: `cargo xtask plugins` builds it (cargo xtask test does)", wasm.display());
        let o = gate(&["plugin", "test", wasm.to_str().expect("utf-8"), "--trace", trace.to_str().expect("utf-8"), "--format", "jsonl"]);
        // Exit 0: every `expect` line of the sample matched, in this language too.
        assert_eq!(o.status.code(), Some(0), "{lang}: {}", text(&o));
        let decisions: Vec<String> = String::from_utf8_lossy(&o.stdout).lines().filter(|l| l.contains("\"kind\":\"decision\"")).map(str::to_string).collect();
        assert_eq!(decisions.len(), 8, "{lang}: {}", text(&o));
        assert!(decisions.iter().all(|d| d.contains("\"by\":\"plugin:example-policy\"")), "{lang}: a decision was not the plugin's: {decisions:#?}");
        outputs.push((lang, decisions));
    }
    let (first, reference) = &outputs[0];
    for (lang, decisions) in &outputs[1..] {
        assert_eq!(decisions, reference, "{lang} decides the sample differently from {first}");
    }
}
