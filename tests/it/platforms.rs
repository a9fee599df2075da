//! `platforms()` holds one descriptor per platform feature, and nothing else.

#[test]
fn platforms_follow_the_features() {
    let platforms = apex_connect::platforms();
    let names: Vec<&str> = platforms.names().collect();
    assert!(names.contains(&"memory"), "{names:?}");
    assert_eq!(names.contains(&"frontapp"), cfg!(feature = "frontapp"));
    assert_eq!(names.contains(&"hubspot"), cfg!(feature = "hubspot"));
    let memory = platforms.get("memory").unwrap();
    assert_eq!(memory.name(), "memory");
    assert!(memory.secrets().iter().any(|s| s.name == "webhook_secret"));
    let e = platforms.get("nope").unwrap_err();
    assert!(
        e.to_string().contains("no connector for this platform"),
        "{e}"
    );
}
