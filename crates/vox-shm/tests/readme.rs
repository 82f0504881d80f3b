//! The README's Rust examples are the example programs CI runs, word for
//! word, in order: the link's own, then the one under "Use with vox".

#[test]
fn the_readme_examples_are_the_example_programs() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("../../README.md")).unwrap();
    let examples = ["examples/request_response.rs", "../vox-shm-vox/examples/hello.rs"];
    let blocks: Vec<&str> = readme
        .split("```rust,no_run\n")
        .skip(1)
        .map(|rest| rest.split("```").next().expect("the block ends").trim_end())
        .collect();
    assert_eq!(blocks.len(), examples.len(), "one example program per Rust block");
    assert_eq!(readme.matches("```rust").count(), examples.len(), "every Rust block in the README is checked here");
    for (block, path) in blocks.iter().zip(examples) {
        let example = std::fs::read_to_string(root.join(path)).unwrap();
        assert_eq!(*block, example.trim_end(), "README's block differs from {path}");
    }
}
