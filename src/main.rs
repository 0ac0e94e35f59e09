fn main() {
    for c in palisade::crdgen::generate().expect("generate") {
        print!("{}", c.yaml);
    }
}
