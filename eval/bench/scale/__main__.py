from eval.bench.scale import main

main()
