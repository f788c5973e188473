import sys

from meshtrace.mesh.proxy.main import main

sys.exit(main())
