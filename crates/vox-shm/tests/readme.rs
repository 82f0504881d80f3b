//! The README's Rust example is the example program CI runs, word for word.

#[test]
fn the_readme_example_is_the_example_program() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("../../README.md")).unwrap();
    let example = std::fs::read_to_string(root.join("examples/request_response.rs")).unwrap();
    let start = readme.find("```rust,no_run\n").expect("a Rust block in the README") + "```rust,no_run\n".len();
    let len = readme[start..].find("```").expect("the block ends");
    assert_eq!(readme[start..start + len].trim_end(), example.trim_end(), "README's block differs from the example");
    assert_eq!(readme.matches("```rust").count(), 1, "every Rust block in the README is checked here");
}
