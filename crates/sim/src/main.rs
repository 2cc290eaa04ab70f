use clap::Parser;
use pollen_sim::config::Scenario;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut s = Scenario::parse();
    s.normalise();
    if let Err(e) = s.check() {
        eprintln!("pollen-sim: {e}");
        return ExitCode::from(2);
    }
    let (json, svg) = (s.json, s.svg.clone());
    if !json {
        eprintln!(
            "simulating {} nodes pulling {} ({} layers) ...",
            s.nodes,
            bytesize::ByteSize(s.image),
            s.layers
        );
    }
    let report = pollen_sim::simulate(s);
    if let Some(path) = svg {
        if let Err(e) = std::fs::write(&path, report.svg()) {
            eprintln!("pollen-sim: cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    if json {
        match serde_json::to_string(&report) {
            Ok(line) => println!("{line}"),
            Err(e) => {
                eprintln!("pollen-sim: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        print!("{}", report.text());
    }
    if report.done < report.nodes {
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}
