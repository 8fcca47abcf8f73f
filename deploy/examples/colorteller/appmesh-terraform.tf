# The classic App Mesh ColorTeller mesh as Terraform (AWS provider `aws_appmesh_*`), as App
# Mesh users wrote it. `maillectl apply -f` takes it unchanged; -p sets the variables.

variable "services_domain" {
  type    = string
  default = "demo.local"
}

variable "app_port" {
  type    = number
  default = 9080
}

locals {
  mesh_name = "colorapp"
}

resource "aws_appmesh_mesh" "colorapp" {
  name = local.mesh_name

  spec {
    egress_filter {
      type = "DROP_ALL"
    }
  }

  tags = {
    team = "colors"
  }
}

resource "aws_appmesh_virtual_node" "colorgateway" {
  name      = "colorgateway"
  mesh_name = aws_appmesh_mesh.colorapp.id

  spec {
    backend {
      virtual_service {
        virtual_service_name = aws_appmesh_virtual_service.colorteller.name
      }
    }

    listener {
      port_mapping {
        port     = var.app_port
        protocol = "http"
      }

      health_check {
        protocol            = "http"
        path                = "/ping"
        healthy_threshold   = 2
        unhealthy_threshold = 2
        timeout_millis      = 2000
        interval_millis     = 5000
      }

      outlier_detection {
        max_server_errors    = 5
        max_ejection_percent = 50
        interval {
          unit  = "s"
          value = 10
        }
        base_ejection_duration {
          unit  = "s"
          value = 30
        }
      }

      timeout {
        http {
          per_request {
            unit  = "s"
            value = 15
          }
          idle {
            unit  = "s"
            value = 300
          }
        }
      }
    }

    service_discovery {
      dns {
        hostname = "colorgateway.${var.services_domain}"
      }
    }
  }
}

resource "aws_appmesh_virtual_node" "white" {
  name      = "colorteller-white"
  mesh_name = aws_appmesh_mesh.colorapp.id

  spec {
    listener {
      port_mapping {
        port     = var.app_port
        protocol = "http"
      }

      health_check {
        protocol            = "http"
        path                = "/ping"
        healthy_threshold   = 2
        unhealthy_threshold = 2
        timeout_millis      = 2000
        interval_millis     = 5000
      }

      outlier_detection {
        max_server_errors    = 5
        max_ejection_percent = 50
        interval {
          unit  = "s"
          value = 10
        }
        base_ejection_duration {
          unit  = "s"
          value = 30
        }
      }

      timeout {
        http {
          per_request {
            unit  = "s"
            value = 15
          }
          idle {
            unit  = "s"
            value = 300
          }
        }
      }
    }

    service_discovery {
      dns {
        hostname = "colorteller-white.${var.services_domain}"
      }
    }
  }
}

resource "aws_appmesh_virtual_node" "black" {
  name      = "colorteller-black"
  mesh_name = aws_appmesh_mesh.colorapp.id

  spec {
    listener {
      port_mapping {
        port     = var.app_port
        protocol = "http"
      }

      health_check {
        protocol            = "http"
        path                = "/ping"
        healthy_threshold   = 2
        unhealthy_threshold = 2
        timeout_millis      = 2000
        interval_millis     = 5000
      }

      outlier_detection {
        max_server_errors    = 5
        max_ejection_percent = 50
        interval {
          unit  = "s"
          value = 10
        }
        base_ejection_duration {
          unit  = "s"
          value = 30
        }
      }

      timeout {
        http {
          per_request {
            unit  = "s"
            value = 15
          }
          idle {
            unit  = "s"
            value = 300
          }
        }
      }
    }

    service_discovery {
      dns {
        hostname = "colorteller-black.${var.services_domain}"
      }
    }
  }
}

resource "aws_appmesh_virtual_node" "blue" {
  name      = "colorteller-blue"
  mesh_name = aws_appmesh_mesh.colorapp.id

  spec {
    listener {
      port_mapping {
        port     = var.app_port
        protocol = "http"
      }

      health_check {
        protocol            = "http"
        path                = "/ping"
        healthy_threshold   = 2
        unhealthy_threshold = 2
        timeout_millis      = 2000
        interval_millis     = 5000
      }

      outlier_detection {
        max_server_errors    = 5
        max_ejection_percent = 50
        interval {
          unit  = "s"
          value = 10
        }
        base_ejection_duration {
          unit  = "s"
          value = 30
        }
      }

      timeout {
        http {
          per_request {
            unit  = "s"
            value = 15
          }
          idle {
            unit  = "s"
            value = 300
          }
        }
      }
    }

    service_discovery {
      dns {
        hostname = "colorteller-blue.${var.services_domain}"
      }
    }
  }
}

resource "aws_appmesh_virtual_node" "red" {
  name      = "colorteller-red"
  mesh_name = aws_appmesh_mesh.colorapp.id

  spec {
    listener {
      port_mapping {
        port     = var.app_port
        protocol = "http"
      }

      health_check {
        protocol            = "http"
        path                = "/ping"
        healthy_threshold   = 2
        unhealthy_threshold = 2
        timeout_millis      = 2000
        interval_millis     = 5000
      }

      outlier_detection {
        max_server_errors    = 5
        max_ejection_percent = 50
        interval {
          unit  = "s"
          value = 10
        }
        base_ejection_duration {
          unit  = "s"
          value = 30
        }
      }

      timeout {
        http {
          per_request {
            unit  = "s"
            value = 15
          }
          idle {
            unit  = "s"
            value = 300
          }
        }
      }
    }

    service_discovery {
      dns {
        hostname = "colorteller-red.${var.services_domain}"
      }
    }
  }
}

resource "aws_appmesh_virtual_router" "colorteller" {
  name      = "colorteller-vr"
  mesh_name = aws_appmesh_mesh.colorapp.id

  spec {
    listener {
      port_mapping {
        port     = var.app_port
        protocol = "http"
      }
    }
  }
}

resource "aws_appmesh_route" "canary" {
  name                = "colorteller-canary"
  mesh_name           = aws_appmesh_mesh.colorapp.id
  virtual_router_name = aws_appmesh_virtual_router.colorteller.name

  spec {
    priority = 0

    http_route {
      match {
        prefix = "/"

        header {
          name = "x-color-canary"
          match {
            exact = "blue"
          }
        }
      }

      action {
        weighted_target {
          virtual_node = aws_appmesh_virtual_node.blue.name
          weight       = 1
        }
      }
    }
  }
}

resource "aws_appmesh_route" "split" {
  name                = "colorteller-route"
  mesh_name           = aws_appmesh_mesh.colorapp.id
  virtual_router_name = aws_appmesh_virtual_router.colorteller.name

  spec {
    priority = 10

    http_route {
      match {
        prefix = "/"
      }

      action {
        weighted_target {
          virtual_node = aws_appmesh_virtual_node.white.name
          weight       = 8
        }
        weighted_target {
          virtual_node = aws_appmesh_virtual_node.black.name
          weight       = 1
        }
        weighted_target {
          virtual_node = aws_appmesh_virtual_node.red.name
          weight       = 1
        }
      }

      retry_policy {
        max_retries       = 2
        http_retry_events = ["server-error", "gateway-error"]
        tcp_retry_events  = ["connection-error"]
        per_retry_timeout {
          unit  = "ms"
          value = 2000
        }
      }
    }
  }
}

resource "aws_appmesh_virtual_service" "colorteller" {
  name      = "colorteller.${var.services_domain}"
  mesh_name = aws_appmesh_mesh.colorapp.id

  spec {
    provider {
      virtual_router {
        virtual_router_name = aws_appmesh_virtual_router.colorteller.name
      }
    }
  }
}

resource "aws_appmesh_virtual_service" "colorgateway" {
  name      = "colorgateway.${var.services_domain}"
  mesh_name = aws_appmesh_mesh.colorapp.id

  spec {
    provider {
      virtual_node {
        virtual_node_name = aws_appmesh_virtual_node.colorgateway.name
      }
    }
  }
}

# Not App Mesh: reported and skipped by Maille.
resource "aws_service_discovery_private_dns_namespace" "colors" {
  name = var.services_domain
  vpc  = "vpc-0123456789abcdef0"
}
